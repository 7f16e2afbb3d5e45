package kube

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"

	"github.com/trellis-mesh/trellis/internal/catalog"
	"github.com/trellis-mesh/trellis/internal/manifest"
	"github.com/trellis-mesh/trellis/internal/proxycfg"
	"github.com/trellis-mesh/trellis/internal/route"
)

// listedRoute is a route or VirtualService as the API server holds it.
type listedRoute struct {
	gvr schema.GroupVersionResource
	obj *unstructured.Unstructured
}

// listedRoutes are the routes of one snapshot: those in it, in the
// snapshot's order (HTTPRoutes, GRPCRoutes, VirtualServices), and those
// that did not decode, with their status.
type listedRoutes struct {
	decoded    []listedRoute
	unreadable []statusUpdate
}

// statusUpdate is the status Trellis gives a route: its entries for the
// parents it is responsible for.
type statusUpdate struct {
	listedRoute
	parents []catalog.RouteParentStatus
}

// routeKind is how one kind of route is read.
type routeKind struct {
	name string
	// decode reads an object with a manifest's rules; the route is the
	// only one of the Routes returned.
	decode func(o any) (route.Routes, error)
	// lenient reads what it can of one that does not decode, for its
	// status: its parentRefs, or hosts.
	lenient func(m catalog.Meta, spec []byte) route.Routes
}

// routeKinds are read in the order route.Validate lists statuses.
var routeKinds = []routeKind{
	{"HTTPRoute", func(o any) (route.Routes, error) {
		rt, err := decodeObject(o, "HTTPRoute", manifest.DecodeHTTPRoute)
		return route.Routes{HTTP: []*catalog.HTTPRoute{rt}}, err
	}, func(m catalog.Meta, spec []byte) route.Routes {
		rt := &catalog.HTTPRoute{Meta: m}
		_ = json.Unmarshal(spec, &rt.Spec)
		return route.Routes{HTTP: []*catalog.HTTPRoute{rt}}
	}},
	{"GRPCRoute", func(o any) (route.Routes, error) {
		rt, err := decodeObject(o, "GRPCRoute", manifest.DecodeGRPCRoute)
		return route.Routes{GRPC: []*catalog.GRPCRoute{rt}}, err
	}, func(m catalog.Meta, spec []byte) route.Routes {
		rt := &catalog.GRPCRoute{Meta: m}
		_ = json.Unmarshal(spec, &rt.Spec)
		return route.Routes{GRPC: []*catalog.GRPCRoute{rt}}
	}},
	{"VirtualService", func(o any) (route.Routes, error) {
		vs, err := decodeObject(o, "VirtualService", manifest.DecodeVirtualService)
		return route.Routes{VS: []*catalog.VirtualService{vs}}, err
	}, func(m catalog.Meta, spec []byte) route.Routes {
		var s struct{ Hosts []string }
		_ = json.Unmarshal(spec, &s)
		return route.Routes{VS: []*catalog.VirtualService{{Meta: m, Spec: catalog.VirtualServiceSpec{Hosts: s.Hosts}}}}
	}},
}

// listRoutes decodes the routes the listers hold (by routeKinds, each
// kind's groups in order, each group's objects by namespace and name)
// into snap, and returns where each came from. One that does not decode
// is logged once and left out; its status says why.
func listRoutes(snap *catalog.Snapshot, listers [][]gvrLister, warned *warnings) *listedRoutes {
	out := &listedRoutes{}
	var rs route.Routes
	for i, k := range routeKinds {
		// A kind read from two groups (a VirtualService in Trellis's and in
		// Istio's) may have one name twice in a namespace: the first
		// group's applies, and the other is refused, so that a proxy knows
		// each route by its kind, namespace and name.
		read := map[string]schema.GroupVersionResource{}
		for _, l := range listers[i] {
			objs, _ := l.List(labels.Everything())
			slices.SortFunc(objs, func(a, b runtime.Object) int {
				ma, mb := a.(metav1.Object), b.(metav1.Object)
				return cmp.Or(strings.Compare(ma.GetNamespace(), mb.GetNamespace()), strings.Compare(ma.GetName(), mb.GetName()))
			})
			for _, o := range objs {
				u, ok := o.(*unstructured.Unstructured)
				if !ok {
					continue
				}
				one, err := k.decode(u)
				key := u.GetNamespace() + "/" + u.GetName()
				if first, dup := read[key]; dup {
					err = fmt.Errorf("%s %s of group %s applies instead, as the first of %s to be read: rename or delete one of them",
						k.name, key, first.Group, groupNames(listers[i]))
				}
				if err == nil {
					read[key] = l.gvr
					rs.HTTP, rs.GRPC, rs.VS = append(rs.HTTP, one.HTTP...), append(rs.GRPC, one.GRPC...), append(rs.VS, one.VS...)
					out.decoded = append(out.decoded, listedRoute{l.gvr, u})
					continue
				}
				if warned.once(k.name, u, err) {
					slog.Warn(k.name+" ignored", "err", err)
				}
				spec, _ := json.Marshal(u.Object["spec"])
				m := meta(u.GetName(), u.GetNamespace(), u.GetLabels(), u.GetAnnotations())
				m.CreationTimestamp, m.Generation = u.GetCreationTimestamp().Time, u.GetGeneration()
				for _, st := range route.Unreadable(k.lenient(m, spec), err, proxycfg.RouteConfig(snap)) {
					out.unreadable = append(out.unreadable, statusUpdate{listedRoute{l.gvr, u}, st.Parents})
				}
			}
		}
	}
	snap.HTTPRoutes, snap.GRPCRoutes, snap.VirtualServices = rs.HTTP, rs.GRPC, rs.VS
	return out
}

// groupNames are the groups of ls, in order.
func groupNames(ls []gvrLister) string {
	var names []string
	for _, l := range ls {
		names = append(names, l.gvr.Group)
	}
	return strings.Join(names, ", ")
}

// statuses are the status of every route: those of snap as
// proxycfg.RouteStatus computes it, then those that did not decode.
func (rs *listedRoutes) statuses(snap *catalog.Snapshot) []statusUpdate {
	var out []statusUpdate
	for i, st := range proxycfg.RouteStatus(snap) {
		out = append(out, statusUpdate{rs.decoded[i], st.Parents})
	}
	return append(out, rs.unreadable...)
}

// Limits of the Gateway API's RouteStatus schema.
const (
	maxStatusParents = 32
	maxMessage       = 32768
)

// statusWriter writes routes' status back to the API server.
type statusWriter struct {
	client dynamic.Interface
	// lease, when set, elects one writer among the control plane's
	// replicas: the others leave their jobs unread, so the leader to be
	// finds the latest.
	lease  resourcelock.Interface
	failed map[string]string // by route, the failure logged last
	latest chan statusJob    // holds the one job not started yet
}

// statusJob is the routes of one snapshot, whose status is to be written.
type statusJob struct {
	routes *listedRoutes
	snap   *catalog.Snapshot
}

func newStatusWriter(client dynamic.Interface, lease resourcelock.Interface) *statusWriter {
	return &statusWriter{client: client, lease: lease, failed: map[string]string{}, latest: make(chan statusJob, 1)}
}

// offer hands over the routes of a new snapshot, replacing those of an
// older one not started yet. One goroutine offers.
func (w *statusWriter) offer(routes *listedRoutes, snap *catalog.Snapshot) {
	select {
	case <-w.latest:
	default:
	}
	w.latest <- statusJob{routes, snap}
}

// run writes what is offered until ctx is done: while it leads, when
// there is a lease.
func (w *statusWriter) run(ctx context.Context) {
	if w.lease == nil {
		w.serve(ctx)
		return
	}
	le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock: w.lease, LeaseDuration: 15 * time.Second, RenewDeadline: 10 * time.Second, RetryPeriod: 2 * time.Second,
		ReleaseOnCancel: true, Name: "route status",
		Callbacks: leaderelection.LeaderCallbacks{OnStartedLeading: w.serve, OnStoppedLeading: func() {}},
	})
	if err != nil {
		slog.Error("route status is not written: no lease to elect its writer", "err", err)
		return
	}
	for ctx.Err() == nil {
		le.Run(ctx) // returns when leadership is lost; stand again
	}
}

// serve writes what is offered until ctx is done.
func (w *statusWriter) serve(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case job := <-w.latest:
			w.write(ctx, job.routes.statuses(job.snap))
		}
	}
}

// write writes each route's status whose entries by Trellis changed
// (route.ControllerName's; other controllers' entries are kept). A write
// that conflicts is left for the next snapshot, which the change that
// conflicted brings.
func (w *statusWriter) write(ctx context.Context, updates []statusUpdate) {
	now := time.Now()
	for _, up := range updates {
		if ctx.Err() != nil {
			return
		}
		key := up.gvr.Resource + " " + qualified(up.obj)
		next, changed := mergeParents(up.obj, up.parents, now)
		if !changed {
			delete(w.failed, key)
			continue
		}
		u := up.obj.DeepCopy()
		if _, ok := u.Object["status"].(map[string]any); !ok {
			u.Object["status"] = map[string]any{} // what was there is no status
		}
		err := unstructured.SetNestedSlice(u.Object, next, "status", "parents")
		if err == nil {
			wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			_, err = w.client.Resource(up.gvr).Namespace(u.GetNamespace()).UpdateStatus(wctx, u, metav1.UpdateOptions{})
			cancel()
		}
		if err == nil || apierrors.IsConflict(err) || apierrors.IsNotFound(err) || ctx.Err() != nil {
			delete(w.failed, key)
			continue
		}
		if w.failed[key] != err.Error() {
			w.failed[key] = err.Error()
			slog.Warn("writing a route's status failed", "kind", u.GetKind(), "route", qualified(u), "err", err)
		}
	}
}

// mergeParents returns u's status.parents with Trellis's entries replaced
// by ours, and whether that changes them. Other controllers' entries stay
// where they are, and ours go where Trellis's were (else at the end), so
// that a controller that keeps the order it finds agrees with the result.
// A condition keeps its lastTransitionTime while its status stays; a new
// or changed one is stamped now.
func mergeParents(u *unstructured.Unstructured, ours []catalog.RouteParentStatus, now time.Time) ([]any, bool) {
	cur, _, _ := unstructured.NestedSlice(u.Object, "status", "parents")
	before := map[string]map[string]any{} // Trellis's entries by parentRef
	others := 0
	for _, p := range cur {
		if m, ok := p.(map[string]any); ok && m["controllerName"] == route.ControllerName {
			before[refKey(m["parentRef"])] = m
		} else {
			others++
		}
	}
	stamp := now.UTC().Format(time.RFC3339)
	var mine []any
	for _, p := range ours {
		if others+len(mine) == maxStatusParents {
			break
		}
		for i := range p.Conditions {
			p.Conditions[i].LastTransitionTime = time.Time{}
			p.Conditions[i].Message = truncate(p.Conditions[i].Message, maxMessage)
		}
		m, err := toUnstructured(p)
		if err != nil {
			continue
		}
		old, _ := before[refKey(m["parentRef"])]["conditions"].([]any)
		conds, _ := m["conditions"].([]any)
		for _, c := range conds {
			c := c.(map[string]any)
			c["lastTransitionTime"] = stamp
			for _, o := range old {
				if o, ok := o.(map[string]any); ok && o["type"] == c["type"] && o["status"] == c["status"] && o["lastTransitionTime"] != nil {
					c["lastTransitionTime"] = o["lastTransitionTime"]
				}
			}
		}
		mine = append(mine, m)
	}
	next := []any{} // the schema's list is never null
	placed := false
	for _, p := range cur {
		if m, ok := p.(map[string]any); ok && m["controllerName"] == route.ControllerName {
			if !placed {
				next, placed = append(next, mine...), true
			}
			continue
		}
		next = append(next, p)
	}
	if !placed {
		next = append(next, mine...)
	}
	return next, !equality.Semantic.DeepEqual(cur, next)
}

// refKey identifies a parentRef as written in a status.
func refKey(ref any) string {
	b, _ := json.Marshal(ref) // maps marshal with sorted keys
	return string(b)
}

// toUnstructured is v as the API server returns objects: integers as
// int64, not float64, so that it compares equal to what was read.
func toUnstructured(v any) (map[string]any, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	var m map[string]any
	return m, utiljson.Unmarshal(b, &m)
}

// truncate cuts s to at most n bytes, on a rune boundary.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
