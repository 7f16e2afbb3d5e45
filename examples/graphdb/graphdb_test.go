package graphdb

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/trellis-mesh/trellis/examples/graphdb/graphpb"
)

// The port is free when freeAddr returns, not held: it is on a loopback
// address of its own (all of 127/8 is loopback), so that another test's
// connections from 127.0.0.1 do not take it meanwhile.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", fmt.Sprintf("127.%d.%d.%d:0", 1+rand.IntN(254), rand.IntN(256), 1+rand.IntN(254)))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startDB runs a zero and an alpha on loopback and returns a client of
// the alpha once it answers.
func startDB(t *testing.T) *Client {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	zeroAddr, httpAddr, grpcAddr := freeAddr(t), freeAddr(t), freeAddr(t)
	done := make(chan error, 2)
	go func() { done <- RunZero(ctx, zeroAddr) }()
	go func() {
		done <- RunAlpha(ctx, AlphaConfig{HTTPAddr: httpAddr, GRPCAddr: grpcAddr, Zero: zeroAddr, Instance: "alpha-0"})
	}()
	t.Cleanup(func() {
		cancel()
		for range 2 {
			if err := <-done; err != nil {
				t.Errorf("server: %v", err)
			}
		}
	})
	c, err := Dial("http://"+httpAddr, grpcAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := c.Health(ctx); err == nil {
			return c
		} else if time.Now().After(deadline) {
			t.Fatalf("alpha never answered /health: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestLoadAndQuery(t *testing.T) {
	c := startDB(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	v, err := c.CheckVersion(ctx)
	if err != nil || v.GetTag() != Release || v.GetInstance() != "alpha-0" || v.GetClient() != "" {
		t.Fatalf("CheckVersion() = %v, %v; want %s from alpha-0 with no client identity", v, err, Release)
	}
	resp, err := c.Load(ctx, StarWars())
	if err != nil {
		t.Fatalf("Load(StarWars) = %v", err)
	}
	if resp.GetCommitTs() != 1 || len(resp.GetUids()) != len(StarWars().GetNodes()) {
		t.Errorf("Load(StarWars) = commit %d, %d uids; want commit 1 from zero and a uid per node", resp.GetCommitTs(), len(resp.GetUids()))
	}
	if _, err := c.Load(ctx, StarWars()); status.Code(err) != codes.AlreadyExists {
		t.Errorf("second Load(StarWars) = %v, want AlreadyExists", err)
	}

	tests := []struct {
		name string
		q    Query
		want []string // names found; with Follow, names linked from the one node
	}{
		{"films", Query{Type: "Film"}, []string{"A New Hope", "Return of the Jedi", "The Empire Strikes Back", "The Phantom Menace"}},
		{"cast", Query{Name: "The Empire Strikes Back", Follow: "directed_by"}, []string{"Irvin Kershner"}},
		{"reverse", Query{Name: "Lando Calrissian", Follow: "~starring"}, []string{"Return of the Jedi", "The Empire Strikes Back"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := c.Query(ctx, tt.q)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, r := range res {
				got = append(got, r.Name)
			}
			if tt.q.Follow != "" {
				if len(res) != 1 {
					t.Fatalf("Query(%+v) found %v, want one node", tt.q, got)
				}
				got = nil
				for _, l := range res[0].Linked {
					got = append(got, l.Name)
				}
			}
			if strings.Join(got, "|") != strings.Join(tt.want, "|") {
				t.Errorf("Query(%+v) = %q, want %q", tt.q, got, tt.want)
			}
		})
	}
}

func TestBadInputIsNamed(t *testing.T) {
	c := startDB(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := c.Load(ctx, &graphpb.LoadRequest{Edges: []*graphpb.Edge{{From: "x", Predicate: "p", To: "y"}}})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), `"x"`) {
		t.Errorf("Load(edge to nowhere) = %v, want InvalidArgument naming x", err)
	}
	if _, err := c.Query(ctx, Query{}); err == nil || !strings.Contains(err.Error(), "400") {
		t.Errorf("Query({}) = %v, want a 400 saying what a query needs", err)
	}
	resp, err := http.Post(c.HTTPBase+"/query", "application/json", strings.NewReader(`{"typo": 1}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("POST /query with an unknown field = %s, want 400", resp.Status)
	}
}

func TestClientID(t *testing.T) {
	for in, want := range map[string]string{
		"": "",
		"By=spiffe://td/ns/db/sa/default;Hash=ab;URI=spiffe://td/ns/a/sa/x":    "spiffe://td/ns/a/sa/x",
		"By=a;URI=spiffe://td/ns/first/sa/x,By=b;URI=spiffe://td/ns/last/sa/y": "spiffe://td/ns/last/sa/y",
		"By=spiffe://td/ns/db/sa/default;Hash=ab":                              "",
	} {
		if got := ClientID(in); got != want {
			t.Errorf("ClientID(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestTraffic(t *testing.T) {
	c := startDB(t)
	counts := c.Traffic(context.Background(), 20, time.Second, 2*time.Second)
	for _, kind := range []string{"health", "check-version", "query", "load"} {
		if counts.OK[kind] == 0 || counts.Failed[kind] != 0 {
			t.Errorf("Traffic: %s ok %d failed %d (%s), want all ok", kind, counts.OK[kind], counts.Failed[kind], counts.LastError[kind])
		}
	}
}
