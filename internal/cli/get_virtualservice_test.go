package cli

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/catalog"
	"github.com/trellis-mesh/trellis/internal/localmesh"
)

// vsFixture is what a mesh with an accepted VirtualService (one host of
// it names no Service), a younger one for the same host, one refused as a
// whole and an HTTPRoute answers.
func vsFixture() []localmesh.RouteStatus {
	core := ""
	cond := func(typ string, ok bool, reason, msg string) catalog.Condition {
		s := catalog.ConditionTrue
		if !ok {
			s = catalog.ConditionFalse
		}
		return catalog.Condition{Type: typ, Status: s, Reason: reason, Message: msg}
	}
	accepted, resolved := cond("Accepted", true, "Accepted", "Accepted"), cond("ResolvedRefs", true, "ResolvedRefs", "All references resolved")
	parent := func(ns, name string, conds ...catalog.Condition) catalog.RouteParentStatus {
		return catalog.RouteParentStatus{ParentRef: catalog.ParentReference{Group: &core, Kind: "Service", Namespace: ns, Name: name},
			ControllerName: "trellis.io/mesh", Conditions: conds}
	}
	created := time.Now().Add(-5 * time.Minute)
	return []localmesh.RouteStatus{
		{Kind: "HTTPRoute", Namespace: "shop", Name: "reviews-split", Created: created,
			Status: catalog.RouteStatus{Parents: []catalog.RouteParentStatus{parent("", "reviews", accepted, resolved)}}},
		{Kind: "VirtualService", Namespace: "shop", Name: "ratings", Created: created, Hosts: []string{"ratings", "ghost.shop"},
			Status: catalog.RouteStatus{Parents: []catalog.RouteParentStatus{
				parent("shop", "ratings", accepted, resolved,
					cond("PartiallyInvalid", true, "UnsupportedValue", "Dropped Rule(s): http[1].match[0].sourceLabels: not supported by Trellis")),
				parent("shop", "ghost", cond("Accepted", false, "NoMatchingParent", "hosts[1]: Service shop/ghost does not exist"), resolved)}}},
		{Kind: "VirtualService", Namespace: "shop", Name: "ratings-later", Created: created, Hosts: []string{"ratings.shop.svc.cluster.local"},
			Status: catalog.RouteStatus{Parents: []catalog.RouteParentStatus{
				parent("shop", "ratings", cond("Accepted", false, "Conflicted", "VirtualService shop/ratings is older"), resolved)}}},
		{Kind: "VirtualService", Namespace: "shop", Name: "tcp-only", Created: created, Hosts: []string{"ratings"},
			Status: catalog.RouteStatus{Parents: []catalog.RouteParentStatus{}}},
		{Kind: "VirtualService", Namespace: "web", Name: "front", Created: created, Hosts: []string{"front"},
			Status: catalog.RouteStatus{Parents: []catalog.RouteParentStatus{parent("web", "front", accepted, resolved)}}},
	}
}

func TestGetVirtualServicesTable(t *testing.T) {
	dir := serveRoutes(t, vsFixture())
	const refused = `not applied, and no status to say why: Trellis refuses a VirtualService without hosts or whose first host is not a Service's name, ` +
		`without http routes, with tcp or tls routes, gateways other than mesh or exportTo other than "*"`
	for _, tc := range []struct {
		name string
		args []string
		want []string // rows, columns separated by runs of spaces
	}{
		{"virtualservices of a namespace", []string{"virtualservices", "-n", "shop"}, []string{
			"NAME HOSTS ACCEPTED RESOLVED-REFS AGE MESSAGE",
			"ratings ratings True True 5m PartiallyInvalid/UnsupportedValue: Dropped Rule(s): http[1].match[0].sourceLabels: not supported by Trellis",
			"ratings ghost.shop False (NoMatchingParent) True 5m Accepted/NoMatchingParent: hosts[1]: Service shop/ghost does not exist",
			"ratings-later ratings.shop.svc.cluster.local False (Conflicted) True 5m Accepted/Conflicted: VirtualService shop/ratings is older",
			"tcp-only ratings - - 5m " + refused,
		}},
		{"one by name, vs", []string{"vs", "ratings-later", "-n", "shop"}, []string{
			"NAME HOSTS ACCEPTED RESOLVED-REFS AGE MESSAGE",
			"ratings-later ratings.shop.svc.cluster.local False (Conflicted) True 5m Accepted/Conflicted: VirtualService shop/ratings is older",
		}},
		{"wide: the Service each host names", []string{"virtualservice", "-A", "-o", "wide"}, []string{
			"NAMESPACE NAME HOSTS SERVICE ACCEPTED RESOLVED-REFS AGE MESSAGE",
			"shop ratings ratings Service shop/ratings True True 5m PartiallyInvalid/UnsupportedValue: Dropped Rule(s): http[1].match[0].sourceLabels: not supported by Trellis",
			"shop ratings ghost.shop Service shop/ghost False (NoMatchingParent) True 5m Accepted/NoMatchingParent: hosts[1]: Service shop/ghost does not exist",
			"shop ratings-later ratings.shop.svc.cluster.local Service shop/ratings False (Conflicted) True 5m Accepted/Conflicted: VirtualService shop/ratings is older",
			"shop tcp-only ratings <none> - - 5m " + refused,
			"web front front Service web/front True True 5m <none>",
		}},
		{"httproutes leave VirtualServices out", []string{"httproutes", "-n", "shop"}, []string{
			"NAME PARENT ACCEPTED RESOLVED-REFS AGE MESSAGE",
			"reviews-split Service shop/reviews True True 5m <none>",
		}},
	} {
		t.Run(tc.name, func(t *testing.T) { checkTable(t, dir, tc.args, tc.want) })
	}
}

// -o json prints the hosts and the status in the Gateway API's shape; an
// empty result says so; on Kubernetes the command says it reads one-host
// meshes only; an unknown kind's error lists virtualservices.
func TestGetVirtualServicesJSONEmptyAndKubernetes(t *testing.T) {
	dir := serveRoutes(t, vsFixture())
	out, _, err := runGet(t, dir, "vs", "-n", "web", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var got []struct {
		Kind, Name string
		Hosts      []string `json:"hosts"`
		Status     struct {
			Parents []struct {
				Conditions []catalog.Condition `json:"conditions"`
			} `json:"parents"`
		} `json:"status"`
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("%v in\n%s", err, out)
	}
	if len(got) != 1 || got[0].Kind != "VirtualService" || got[0].Name != "front" || strings.Join(got[0].Hosts, ",") != "front" ||
		len(got[0].Status.Parents) != 1 || got[0].Status.Parents[0].Conditions[0].Status != catalog.ConditionTrue {
		t.Errorf("get vs -n web -o json = %s, want web/front, host front, accepted", out)
	}
	_, stderr, err := runGet(t, dir, "virtualservices", "-n", "db")
	if err != nil || !strings.Contains(stderr, "No virtualservices found in db namespace.") {
		t.Errorf("get virtualservices -n db: %v, stderr %q; want it to say none is found", err, stderr)
	}
	if _, _, err := runGet(t, dir, "virtualservicez"); err == nil || !strings.Contains(err.Error(), "grpcroutes, virtualservices or destinationrules") {
		t.Errorf("get virtualservicez: %v, want the kinds listed, virtualservices among them", err)
	}
}
