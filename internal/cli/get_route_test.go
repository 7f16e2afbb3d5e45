package cli

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/catalog"
	"github.com/trellis-mesh/trellis/internal/localmesh"
	"github.com/trellis-mesh/trellis/internal/unixapi"
)

// routeFixture is what a mesh with a canary split, a route whose Service
// does not exist, a route with a dropped rule and a GRPCRoute answers.
func routeFixture() []localmesh.RouteStatus {
	core := ""
	cond := func(typ string, ok bool, reason, msg string) catalog.Condition {
		s := catalog.ConditionTrue
		if !ok {
			s = catalog.ConditionFalse
		}
		return catalog.Condition{Type: typ, Status: s, Reason: reason, Message: msg}
	}
	accepted, resolved := cond("Accepted", true, "Accepted", "Accepted"), cond("ResolvedRefs", true, "ResolvedRefs", "All references resolved")
	parent := func(name string, port int32, conds ...catalog.Condition) catalog.RouteParentStatus {
		return catalog.RouteParentStatus{ParentRef: catalog.ParentReference{Group: &core, Kind: "Service", Name: name, Port: port},
			ControllerName: "trellis.io/mesh", Conditions: conds}
	}
	created := time.Now().Add(-5 * time.Minute)
	return []localmesh.RouteStatus{
		{Kind: "HTTPRoute", Namespace: "shop", Name: "reviews-split", Created: created,
			Status: catalog.RouteStatus{Parents: []catalog.RouteParentStatus{parent("reviews", 9080, accepted, resolved)}}},
		{Kind: "HTTPRoute", Namespace: "shop", Name: "lost", Created: created,
			Status: catalog.RouteStatus{Parents: []catalog.RouteParentStatus{parent("nowhere", 0,
				cond("Accepted", false, "NoMatchingParent", "parentRefs[0]: Service shop/nowhere does not exist"), resolved)}}},
		{Kind: "HTTPRoute", Namespace: "shop", Name: "partly", Created: created,
			Status: catalog.RouteStatus{Parents: []catalog.RouteParentStatus{parent("reviews", 0, accepted,
				cond("ResolvedRefs", false, "BackendNotFound", "rules[0].backendRefs[0]: Service shop/reviews-v3 does not exist"),
				cond("PartiallyInvalid", true, "UnsupportedValue", `Dropped Rule(s): rules[1].matches[0].method: "get" is not an HTTP method`))}}},
		{Kind: "HTTPRoute", Namespace: "shop", Name: "gateway-only", Created: created, Status: catalog.RouteStatus{Parents: []catalog.RouteParentStatus{}}},
		{Kind: "HTTPRoute", Namespace: "web", Name: "elsewhere", Created: created,
			Status: catalog.RouteStatus{Parents: []catalog.RouteParentStatus{parent("front", 80, accepted, resolved)}}},
		{Kind: "GRPCRoute", Namespace: "shop", Name: "reviews-rpc", Created: created,
			Status: catalog.RouteStatus{Parents: []catalog.RouteParentStatus{parent("reviews", 9090, accepted, resolved)}}},
	}
}

// serveRoutes answers GET /v1/routes on a mesh socket in a new state
// directory, as a running mesh does.
func serveRoutes(t *testing.T, routes []localmesh.RouteStatus) string {
	return serveAPI(t, "GET /v1/routes", routes)
}

// serveAPI answers pattern with v, as JSON, on a mesh socket in a new
// state directory, as a running mesh does.
func serveAPI(t *testing.T, pattern string, v any) string {
	t.Helper()
	dir := t.TempDir()
	ln, err := unixapi.Listen(localmesh.SocketPath(dir))
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc(pattern, func(w http.ResponseWriter, _ *http.Request) { unixapi.WriteJSON(w, http.StatusOK, v) })
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return dir
}

// checkTable runs trellis get args against dir and compares its rows with
// want, the runs of spaces between columns aside.
func checkTable(t *testing.T, dir string, args, want []string) {
	t.Helper()
	out, _, err := runGet(t, dir, args...)
	if err != nil {
		t.Fatal(err)
	}
	norm := func(lines []string) string {
		for i, line := range lines {
			lines[i] = strings.Join(strings.Fields(line), " ")
		}
		return strings.Join(lines, "\n")
	}
	if g, w := norm(strings.Split(strings.TrimSpace(out), "\n")), norm(slices.Clone(want)); g != w {
		t.Errorf("get %v:\n%s\nwant\n%s", args, g, w)
	}
}

func runGet(t *testing.T, dir string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errOut strings.Builder
	cmd := newGetCmd(&options{stateDir: dir, out: &out, err: &errOut})
	cmd.SetArgs(args)
	cmd.SetOut(&errOut)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = cmd.ExecuteContext(ctx)
	return out.String(), errOut.String(), err
}

func TestGetRoutesTable(t *testing.T) {
	dir := serveRoutes(t, routeFixture())
	for _, tc := range []struct {
		name string
		args []string
		want []string // rows, columns separated by runs of spaces
	}{
		{"httproutes of a namespace", []string{"httproutes", "-n", "shop"}, []string{
			"NAME PARENT ACCEPTED RESOLVED-REFS AGE MESSAGE",
			"reviews-split Service shop/reviews:9080 True True 5m <none>",
			"lost Service shop/nowhere False (NoMatchingParent) True 5m Accepted/NoMatchingParent: parentRefs[0]: Service shop/nowhere does not exist",
			`partly Service shop/reviews True False (BackendNotFound) 5m ResolvedRefs/BackendNotFound: rules[0].backendRefs[0]: Service shop/reviews-v3 does not exist; PartiallyInvalid/UnsupportedValue: Dropped Rule(s): rules[1].matches[0].method: "get" is not an HTTP method`,
			`gateway-only <none> - - 5m no parentRef names a Service (group "", kind Service): the mesh does not use this route`,
		}},
		{"one by name", []string{"httproute", "lost", "-n", "shop"}, []string{
			"NAME PARENT ACCEPTED RESOLVED-REFS AGE MESSAGE",
			"lost Service shop/nowhere False (NoMatchingParent) True 5m Accepted/NoMatchingParent: parentRefs[0]: Service shop/nowhere does not exist",
		}},
		{"grpcroutes of every namespace", []string{"grpcroutes", "-A"}, []string{
			"NAMESPACE NAME PARENT ACCEPTED RESOLVED-REFS AGE MESSAGE",
			"shop reviews-rpc Service shop/reviews:9090 True True 5m <none>",
		}},
	} {
		t.Run(tc.name, func(t *testing.T) { checkTable(t, dir, tc.args, tc.want) })
	}
}

// -o json prints the routes with their status in the Gateway API's
// shape; an empty result says so, as for the other kinds.
func TestGetRoutesJSONAndEmpty(t *testing.T) {
	dir := serveRoutes(t, routeFixture())
	out, _, err := runGet(t, dir, "httproutes", "-n", "web", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var got []struct {
		Kind, Namespace, Name string
		Status                struct {
			Parents []struct {
				ParentRef struct {
					Group *string `json:"group"`
					Kind  string  `json:"kind"`
					Name  string  `json:"name"`
				} `json:"parentRef"`
				ControllerName string              `json:"controllerName"`
				Conditions     []catalog.Condition `json:"conditions"`
			} `json:"parents"`
		} `json:"status"`
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("%v in\n%s", err, out)
	}
	if len(got) != 1 || got[0].Name != "elsewhere" || len(got[0].Status.Parents) != 1 {
		t.Fatalf("get httproutes -n web -o json = %s, want web/elsewhere with one parent", out)
	}
	p := got[0].Status.Parents[0]
	if p.ParentRef.Group == nil || *p.ParentRef.Group != "" || p.ParentRef.Name != "front" || p.ControllerName != "trellis.io/mesh" ||
		len(p.Conditions) != 2 || p.Conditions[0].Type != "Accepted" || p.Conditions[0].Status != catalog.ConditionTrue {
		t.Errorf("parent = %+v, want Service front, Accepted True, by trellis.io/mesh", p)
	}
	_, stderr, err := runGet(t, dir, "grpcroutes", "-n", "web")
	if err != nil || !strings.Contains(stderr, "No grpcroutes found in web namespace.") {
		t.Errorf("get grpcroutes -n web: %v, stderr %q; want it to say none is found", err, stderr)
	}
}
