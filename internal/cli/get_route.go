package cli

import (
	"fmt"
	"io"
	"strings"

	"github.com/trellis-mesh/trellis/internal/catalog"
	"github.com/trellis-mesh/trellis/internal/localmesh"
	meshroute "github.com/trellis-mesh/trellis/internal/route"
)

// printRoutes prints one row per parent of each route: the Service (and
// port) it attaches to, Accepted and ResolvedRefs, and the messages of
// every condition not as it should be, PartiallyInvalid included. A
// route with no parentRef to a Service gets one row that says so.
func printRoutes(w io.Writer, routes []localmesh.RouteStatus, allNS, _ bool) {
	printRouteRows(w, routes, allNS, routeColumns{
		head: []string{"PARENT"},
		parent: func(r localmesh.RouteStatus, _ int, p catalog.RouteParentStatus) []string {
			return []string{parentName(r.Namespace, p.ParentRef)}
		},
		none: func(localmesh.RouteStatus) ([]string, string) {
			return []string{"<none>"}, `no parentRef names a Service (group "", kind Service): the mesh does not use this route`
		},
	})
}

// printVirtualServices prints one row per host of each VirtualService,
// as printRoutes does per parent: its parents are the Services its hosts
// name, in order. Wide adds the Service each host names.
func printVirtualServices(w io.Writer, vss []localmesh.RouteStatus, allNS, wide bool) {
	cols := routeColumns{
		head: []string{"HOSTS"},
		parent: func(r localmesh.RouteStatus, i int, p catalog.RouteParentStatus) []string {
			host := p.ParentRef.Name
			if i < len(r.Hosts) {
				host = r.Hosts[i]
			}
			if !wide {
				return []string{host}
			}
			return []string{host, parentName(r.Namespace, p.ParentRef)}
		},
		// internal/route gives a VirtualService refused as a whole no
		// parent, so its reason is not known here: say where to look.
		none: func(r localmesh.RouteStatus) ([]string, string) {
			cols := []string{orNone(strings.Join(r.Hosts, ","))}
			if wide {
				cols = append(cols, "<none>")
			}
			return cols, `not applied, and no status to say why: Trellis refuses a VirtualService without hosts or whose first host ` +
				`is not a Service's name, without http routes, with tcp or tls routes, gateways other than mesh or exportTo other than "*"`
		},
	}
	if wide {
		cols.head = append(cols.head, "SERVICE")
	}
	printRouteRows(w, vss, allNS, cols)
}

// routeColumns are what a kind of route shows before ACCEPTED: the
// columns' heads, their values for one parent (the ith), and for a route
// with no parent, with the message that says why.
type routeColumns struct {
	head   []string
	parent func(r localmesh.RouteStatus, i int, p catalog.RouteParentStatus) []string
	none   func(r localmesh.RouteStatus) ([]string, string)
}

// printRouteRows prints NAME, the kind's columns, ACCEPTED,
// RESOLVED-REFS, AGE and MESSAGE, one row per parent of each route.
func printRouteRows(w io.Writer, routes []localmesh.RouteStatus, allNS bool, cols routeColumns) {
	head := append(append([]string{"NAME"}, cols.head...), "ACCEPTED", "RESOLVED-REFS", "AGE", "MESSAGE")
	row(w, withNS(allNS, "NAMESPACE", head)...)
	for _, r := range routes {
		if len(r.Status.Parents) == 0 {
			which, msg := cols.none(r)
			row(w, withNS(allNS, r.Namespace, append(append([]string{r.Name}, which...), "-", "-", age(r.Created), msg))...)
		}
		for i, p := range r.Status.Parents {
			accepted, resolved := conditionOf(p, meshroute.ConditionAccepted), conditionOf(p, meshroute.ConditionResolvedRefs)
			line := append([]string{r.Name}, cols.parent(r, i, p)...)
			line = append(line, statusOf(accepted), statusOf(resolved), age(r.Created), problems(p.Conditions))
			row(w, withNS(allNS, r.Namespace, line)...)
		}
	}
}

// parentName is "Service ns/name", with ":port" or ":sectionName" when
// the parentRef names one port.
func parentName(routeNS string, p catalog.ParentReference) string {
	ns := p.Namespace
	if ns == "" {
		ns = routeNS
	}
	s := p.Kind + " " + ns + "/" + p.Name
	switch {
	case p.Port != 0 && p.SectionName != "":
		s += fmt.Sprintf(":%d(%s)", p.Port, p.SectionName)
	case p.Port != 0:
		s += fmt.Sprintf(":%d", p.Port)
	case p.SectionName != "":
		s += ":" + p.SectionName
	}
	return s
}

func conditionOf(p catalog.RouteParentStatus, typ string) *catalog.Condition {
	for i := range p.Conditions {
		if p.Conditions[i].Type == typ {
			return &p.Conditions[i]
		}
	}
	return nil
}

// statusOf is "True", or the status and reason of a condition that is
// not True ("False (NoMatchingParent)"); "-" when there is none.
func statusOf(c *catalog.Condition) string {
	switch {
	case c == nil:
		return "-"
	case c.Status == catalog.ConditionTrue:
		return string(c.Status)
	}
	return fmt.Sprintf("%s (%s)", c.Status, c.Reason)
}

// problems joins the messages of the conditions not in their good state
// (Accepted or ResolvedRefs not True, PartiallyInvalid True), each as
// "Type/Reason: message"; "<none>" when all is well.
func problems(conds []catalog.Condition) string {
	var out []string
	for _, c := range conds {
		bad := c.Status != catalog.ConditionTrue
		if c.Type == meshroute.ConditionPartiallyInvalid {
			bad = c.Status == catalog.ConditionTrue
		}
		if bad {
			out = append(out, c.Type+"/"+c.Reason+": "+c.Message)
		}
	}
	if len(out) == 0 {
		return "<none>"
	}
	return strings.Join(out, "; ")
}
