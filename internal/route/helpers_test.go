package route

import (
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/trellis-mesh/trellis/internal/catalog"
)

// object is a route manifest as a user writes it.
type object[S any] struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name              string    `json:"name"`
		Namespace         string    `json:"namespace"`
		CreationTimestamp time.Time `json:"creationTimestamp"`
		Generation        int64     `json:"generation"`
	} `json:"metadata"`
	Spec S `json:"spec"`
}

func (o object[S]) meta() catalog.Meta {
	ns := o.Metadata.Namespace
	if ns == "" {
		ns = "db"
	}
	return catalog.Meta{Name: o.Metadata.Name, Namespace: ns, CreationTimestamp: o.Metadata.CreationTimestamp, Generation: o.Metadata.Generation}
}

// parse reads HTTPRoutes, GRPCRoutes and VirtualServices from a multi-document manifest,
// strictly. A route without a namespace is in "db".
func parse(t testing.TB, manifest string) Routes {
	t.Helper()
	var rs Routes
	for _, doc := range strings.Split(manifest, "\n---\n") {
		var head struct {
			Kind string `json:"kind"`
		}
		if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
			t.Fatalf("%v in\n%s", err, doc)
		}
		switch head.Kind {
		case "HTTPRoute":
			var o object[catalog.HTTPRouteSpec]
			if err := yaml.UnmarshalStrict([]byte(doc), &o); err != nil {
				t.Fatalf("%v in\n%s", err, doc)
			}
			rs.HTTP = append(rs.HTTP, &catalog.HTTPRoute{Meta: o.meta(), Spec: o.Spec})
		case "GRPCRoute":
			var o object[catalog.GRPCRouteSpec]
			if err := yaml.UnmarshalStrict([]byte(doc), &o); err != nil {
				t.Fatalf("%v in\n%s", err, doc)
			}
			rs.GRPC = append(rs.GRPC, &catalog.GRPCRoute{Meta: o.meta(), Spec: o.Spec})
		case "VirtualService":
			var o object[catalog.VirtualServiceSpec]
			if err := yaml.UnmarshalStrict([]byte(doc), &o); err != nil {
				t.Fatalf("%v in\n%s", err, doc)
			}
			rs.VS = append(rs.VS, &catalog.VirtualService{Meta: o.meta(), Spec: o.Spec})
		default:
			t.Fatalf("kind %q in\n%s", head.Kind, doc)
		}
	}
	return rs
}

// The mesh the tests run in: db/graph serves HTTP on 8080 and gRPC on
// 9090; its versions and a shadow are backends.
var mesh = Config{Services: []Service{
	{Namespace: "db", Name: "graph", Ports: []Port{{"http", 8080}, {"grpc", 9090}}, Subsets: []string{"v1", "v2"}, Rule: "db/graph"},
	{Namespace: "db", Name: "graph-v1", Ports: []Port{{"http", 8080}, {"grpc", 9090}}},
	{Namespace: "db", Name: "graph-v2", Ports: []Port{{"http", 8080}, {"grpc", 9090}}},
	{Namespace: "db", Name: "shadow", Ports: []Port{{"http", 8080}}},
	{Namespace: "web", Name: "front", Ports: []Port{{"http", 80}}},
}}

var graphHTTP = Target{Namespace: "db", Name: "graph", Port: 8080}

// header is a header set as the proxy has it.
func header(kv ...string) func(string) []string {
	h := http.Header{}
	for i := 0; i < len(kv); i += 2 {
		h.Add(kv[i], kv[i+1])
	}
	return func(name string) []string { return h[name] }
}

// get is a GET of path (with its query) to graph.
func get(target string, kv ...string) *Request {
	path, query, _ := strings.Cut(target, "?")
	return &Request{Method: "GET", Host: "graph.db:8080", Path: path, RawQuery: query, Header: header(kv...)}
}

func compile(t testing.TB, manifest string) *Table {
	t.Helper()
	return Compile(graphHTTP, parse(t, manifest), mesh)
}

// route is the head of an HTTPRoute on graph's HTTP port.
const route = `apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: db}
spec:
  parentRefs: [{group: "", kind: Service, name: graph, port: 8080}]
`

// decided is the part of a decision most tests compare.
func decided(d Decision) string {
	switch {
	case !d.Routed:
		return "unrouted"
	case d.Status != 0 && d.Route.Name == "":
		return http.StatusText(d.Status)
	case d.Status != 0:
		return d.Route.Name + "[" + strconv.Itoa(d.Rule) + "] " + http.StatusText(d.Status)
	}
	return d.Route.Name + "[" + strconv.Itoa(d.Rule) + "] " + d.Backend.String()
}

func durationOf(s string) catalog.Duration { return catalog.Duration(s) }
