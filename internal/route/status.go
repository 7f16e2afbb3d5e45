package route

import (
	"fmt"
	"slices"
	"strings"

	"github.com/trellis-mesh/trellis/internal/catalog"
)

// Status is one route's status for the parents Trellis is responsible
// for: its parentRefs to Services. Parents is in parentRef order;
// LastTransitionTime is left to the writer.
type Status struct {
	Route   catalog.Ref
	Parents []catalog.RouteParentStatus
}

// Validate checks every route against cfg and returns its status, in the
// order given (HTTPRoutes, then GRPCRoutes). Each parentRef to a Service
// gets Accepted and ResolvedRefs, and PartiallyInvalid when rules were
// dropped:
//
//   - Accepted False, NoMatchingParent: the Service, or the port the
//     parentRef names, does not exist, or the parentRef says kind Service
//     without group "".
//   - Accepted False, UnsupportedValue or IncompatibleFilters: no rule is
//     valid, or the route breaks a limit; the message names the field.
//   - Accepted False, Conflicted: GRPCRoutes of the route's namespace
//     take every port it attaches to.
//   - ResolvedRefs False, InvalidKind or BackendNotFound: a backendRef (or
//     a mirror's) is invalid; the rule stays and sends that backend's
//     share of requests a 500.
//
// ParentRefs to anything else (Gateways) are another controller's and are
// left out.
func Validate(rs Routes, cfg Config) []Status {
	return validate(rs, cfg, nil)
}

// Unreadable is the status of routes rs, which their source could not
// read whole, for why: rs holds what could be read of them (their
// parentRefs, a VirtualService's hosts). Each parent that names a Service
// gets Accepted False with why, as Validate gives a route it refuses.
func Unreadable(rs Routes, why error, cfg Config) []Status {
	return validate(rs, cfg, unsupported("%v", why))
}

// validate is Validate, refusing every route for refuse when it is set.
func validate(rs Routes, cfg Config, refuse error) []Status {
	all := checkAll(rs, cfg)
	if refuse != nil {
		for _, ch := range all {
			ch.refused, ch.rules, ch.dropped, ch.refs = refuse, nil, nil, nil
		}
	}
	out := make([]Status, 0, len(all))
	for _, ch := range all {
		st := Status{Route: ch.src.ref}
		for i, p := range ch.parents {
			if !isService(p) && !(p.Kind == "Service" && p.Group == nil) {
				continue
			}
			st.Parents = append(st.Parents, catalog.RouteParentStatus{ParentRef: p, ControllerName: ControllerName,
				Conditions: conditions(ch, i, all, cfg.Services)})
		}
		out = append(out, st)
	}
	return out
}

// checkAll checks each route of rs on its own, HTTPRoutes, GRPCRoutes
// then VirtualServices.
func checkAll(rs Routes, cfg Config) []*checked {
	c := newCompiler(cfg)
	var all []*checked
	for _, rt := range rs.HTTP {
		all = append(all, c.checkHTTP(rt))
	}
	for _, rt := range rs.GRPC {
		all = append(all, c.checkGRPC(rt))
	}
	for _, vs := range rs.VS {
		all = append(all, c.checkVS(vs))
	}
	return all
}

// Split is where a route sends requests to one of its parent Services:
// one backend of one rule, with its share of the rule's requests.
type Split struct {
	Route catalog.Ref
	// Rule is the rule's index (a VirtualService's http route's).
	Rule int
	// Parent is the Service the requests are sent to; its Port is 0.
	Parent Backend
	// Backend is where Share of them go; Invalid when it does not
	// resolve (its requests get 500).
	Backend Backend
	Invalid bool
	Share   float64
	// Consumers is the namespace whose clients the route applies to, for
	// a consumer route (in another namespace than its parent); "" for a
	// producer route, which applies to every client.
	Consumers string
}

// Splits are the splits of every route of rs that cfg accepts for a
// parent, each parent once, in rs's order: what a service graph draws
// between a Service and the backends its routes send to.
func Splits(rs Routes, cfg Config) []Split {
	all := checkAll(rs, cfg)
	var out []Split
	for _, ch := range all {
		seen := map[Backend]bool{}
		for i, p := range ch.parents {
			parent := Backend{Namespace: orDefault(p.Namespace, ch.src.ref.Namespace), Name: p.Name}
			if !isService(p) || seen[parent] {
				continue
			}
			if reason, _ := accepted(ch, i, all, cfg.Services); reason != ReasonAccepted {
				continue
			}
			seen[parent] = true
			consumers := ""
			if parent.Namespace != ch.src.ref.Namespace {
				consumers = ch.src.ref.Namespace
			}
			for _, r := range ch.rules {
				for _, sh := range r.shares() {
					out = append(out, Split{Route: ch.src.ref, Rule: r.index, Parent: parent, Backend: sh.Backend, Invalid: sh.Invalid,
						Share: sh.Share, Consumers: consumers})
				}
			}
		}
	}
	return out
}

func conditions(ch *checked, i int, all []*checked, svcs []Service) []catalog.Condition {
	cond := func(typ string, ok bool, reason, msg string) catalog.Condition {
		s := catalog.ConditionTrue
		if !ok {
			s = catalog.ConditionFalse
		}
		return catalog.Condition{Type: typ, Status: s, ObservedGeneration: ch.src.generation, Reason: reason, Message: msg}
	}
	reason, msg := accepted(ch, i, all, svcs)
	out := []catalog.Condition{cond(ConditionAccepted, reason == ReasonAccepted, reason, msg)}
	if len(ch.refs) == 0 {
		out = append(out, cond(ConditionResolvedRefs, true, ReasonResolvedRefs, "All references resolved"))
	} else {
		msgs := make([]error, len(ch.refs))
		for i, r := range ch.refs {
			msgs[i] = fmt.Errorf("%s", r.msg)
		}
		out = append(out, cond(ConditionResolvedRefs, false, ch.refs[0].reason, joinProblems(msgs)))
	}
	if reason == ReasonAccepted && len(ch.dropped) > 0 {
		out = append(out, cond(ConditionPartiallyInvalid, true, reasonOf(ch.dropped[0]), "Dropped Rule(s): "+joinProblems(ch.dropped)))
	}
	return out
}

// accepted returns the Accepted reason for parentRefs[i], and a message.
func accepted(ch *checked, i int, all []*checked, svcs []Service) (reason, msg string) {
	p := ch.parents[i]
	field := fmt.Sprintf("parentRefs[%d]", i)
	if ch.ordered {
		field = fmt.Sprintf("hosts[%d]", i)
	}
	if p.Group == nil {
		return ReasonNoMatchingParent, field + `: without group, kind Service means a Service of gateway.networking.k8s.io: write group: "" for a Kubernetes Service`
	}
	ns := orDefault(p.Namespace, ch.src.ref.Namespace)
	si := slices.IndexFunc(svcs, func(s Service) bool { return s.Namespace == ns && s.Name == p.Name })
	if si < 0 {
		return ReasonNoMatchingParent, fmt.Sprintf("%s: Service %s/%s does not exist", field, ns, p.Name)
	}
	var ports []Port
	for _, port := range svcs[si].Ports {
		if selectsPort(p, port) {
			ports = append(ports, port)
		}
	}
	if len(ports) == 0 {
		return ReasonNoMatchingParent, fmt.Sprintf("%s: Service %s/%s has no port %s (it has %s)", field, ns, p.Name, portSpec(p), portNames(svcs[si].Ports))
	}
	switch {
	case ch.refused != nil:
		return reasonOf(ch.refused), ch.refused.Error()
	case len(ch.rules) == 0:
		return reasonOf(ch.dropped[0]), "no valid rule: " + joinProblems(ch.dropped)
	}
	if ch.ordered {
		if by := vsConflict(ch, ns, p.Name, ports, all); by != nil {
			return ReasonConflicted, fmt.Sprintf("%s attaches to Service %s/%s too and wins (Gateway API routes win over VirtualServices, "+
				"and of VirtualServices the oldest): attach one of them elsewhere", by.src.ref, ns, p.Name)
		}
	} else if !ch.grpc {
		if by := conflict(ch, ns, p.Name, ports, all); by != nil {
			return ReasonConflicted, fmt.Sprintf("%s attaches to the same port of Service %s/%s, and a GRPCRoute wins over an HTTPRoute (GEP-1294): attach them to different ports",
				by.src.ref, ns, p.Name)
		}
	}
	return ReasonAccepted, "Accepted"
}

// conflict returns an accepted GRPCRoute of the route's namespace that
// attaches to all of ports, or nil.
func conflict(ch *checked, ns, name string, ports []Port, all []*checked) *checked {
	var by *checked
	for _, port := range ports {
		i := slices.IndexFunc(all, func(g *checked) bool {
			return g.grpc && g.accepted() && g.src.ref.Namespace == ch.src.ref.Namespace && g.attaches(ns, name, port)
		})
		if i < 0 {
			return nil
		}
		by = all[i]
	}
	return by
}

// vsConflict returns a route of the VirtualService's namespace that
// takes all of ports from it: an accepted Gateway API route, or an older
// VirtualService; nil if there is none.
func vsConflict(ch *checked, ns, name string, ports []Port, all []*checked) *checked {
	var by *checked
	for _, port := range ports {
		i := slices.IndexFunc(all, func(o *checked) bool {
			if o == ch || !o.accepted() || o.src.ref.Namespace != ch.src.ref.Namespace || !o.attaches(ns, name, port) {
				return false
			}
			older := o.src.created.Compare(ch.src.created)
			return !o.ordered || older < 0 || older == 0 && o.src.key < ch.src.key
		})
		if i < 0 {
			return nil
		}
		by = all[i]
	}
	return by
}

func portSpec(p catalog.ParentReference) string {
	switch {
	case p.Port != 0 && p.SectionName != "":
		return fmt.Sprintf("%d named %q", p.Port, p.SectionName)
	case p.Port != 0:
		return fmt.Sprint(p.Port)
	}
	return fmt.Sprintf("named %q", p.SectionName)
}

func portNames(ps []Port) string {
	if len(ps) == 0 {
		return "none"
	}
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = fmt.Sprintf("%d %q", p.Port, p.Name)
	}
	return strings.Join(s, ", ")
}

// joinProblems joins up to eight problems, then counts the rest.
func joinProblems(errs []error) string {
	const most = 8
	var s []string
	for i, err := range errs {
		if i == most {
			s = append(s, fmt.Sprintf("and %d more", len(errs)-most))
			break
		}
		s = append(s, err.Error())
	}
	return strings.Join(s, "; ")
}
