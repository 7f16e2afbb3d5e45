package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/trellis-mesh/trellis/internal/meshpb"
	routing "github.com/trellis-mesh/trellis/internal/route"
	"github.com/trellis-mesh/trellis/internal/telemetry"
)

// resilienceRoutes are alpha's rules for the tests below; alpha-both has
// both apps as endpoints.
const resilienceRoutes = `
metadata: {name: alpha, namespace: db}
spec:
  parentRefs: [{group: "", kind: Service, name: alpha, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /flaky}}, {path: {type: PathPrefix, value: /big}}]
    retry: {codes: [503], attempts: 6}
    backendRefs: [{name: alpha-both, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /down}}]
    retry: {codes: [503], attempts: 2, backoff: 10ms}
    backendRefs: [{name: alpha-both, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /slow}}]
    timeouts: {request: 300ms}
    backendRefs: [{name: alpha-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /try}}]
    timeouts: {request: 2s, backendRequest: 100ms}
    retry: {attempts: 1}
    backendRefs: [{name: alpha-both, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /mirror}}]
    filters: [{type: RequestMirror, requestMirror: {backendRef: {name: alpha-v2, port: 80}}}]
    backendRefs: [{name: alpha-v1, port: 80}]
`

// resilienceApp is what the apps behind alpha do, by path, and what they
// saw.
type resilienceApp struct {
	requests atomic.Int64 // every request
	retried  atomic.Int64 // requests with an attempt past the first
	slowHits atomic.Int64 // /try requests alpha-0 held
	mu       sync.Mutex
	copies   []string // /mirror requests alpha-1 got: host and body
	bigSum   [sha256.Size]byte
}

func (a *resilienceApp) handler(name string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.requests.Add(1)
		if n, _ := strconv.Atoi(r.Header.Get(attemptHeader)); n > 1 {
			a.retried.Add(1)
		}
		body, _ := io.ReadAll(r.Body)
		switch {
		case strings.HasPrefix(r.URL.Path, "/flaky") && rand.N(10) < 3, strings.HasPrefix(r.URL.Path, "/down"):
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		case strings.HasPrefix(r.URL.Path, "/big"):
			a.mu.Lock()
			a.bigSum = sha256.Sum256(body)
			a.mu.Unlock()
			w.WriteHeader(http.StatusServiceUnavailable) // a retry would be answered alike
			return
		case strings.HasPrefix(r.URL.Path, "/slow"), strings.HasPrefix(r.URL.Path, "/try") && name == "alpha-0":
			if strings.HasPrefix(r.URL.Path, "/try") {
				a.slowHits.Add(1)
			}
			select {
			case <-r.Context().Done():
			case <-time.After(2 * time.Second):
			}
		case strings.HasPrefix(r.URL.Path, "/mirror") && name == "alpha-1":
			a.mu.Lock()
			a.copies = append(a.copies, r.Host+" "+string(body))
			a.mu.Unlock()
			w.WriteHeader(http.StatusInternalServerError) // the mirror's answer must not matter
			return
		}
		fmt.Fprintf(w, "%s %s", name, body)
	})
}

func newResilienceMesh(t *testing.T) (*testMesh, *resilienceApp) {
	t.Helper()
	app := &resilienceApp{}
	m := newRoutedMeshApp(t, resilienceRoutes, app.handler)
	m.outbound.Metrics = telemetry.New("cluster.local")
	return m, app
}

// appClients are an HTTP/1.1 client and an h2c one, each holding one
// connection: the engine hands both to the path that retries.
func appClients(t *testing.T) []struct {
	name string
	c    *http.Client
} {
	h1 := &http.Client{Transport: &http.Transport{MaxConnsPerHost: 1}, Timeout: 30 * time.Second}
	t.Cleanup(h1.CloseIdleConnections)
	h2c, _ := oneH2CConnection(t)
	return []struct {
		name string
		c    *http.Client
	}{{"HTTP/1.1", h1}, {"h2c", h2c}}
}

// A backend failing 30 % of requests with 503, retried on the route's
// policy: the client sees under 1 % of failures, and the app sees each
// attempt numbered. 250 requests need about 110 retries, within the
// budget's floor (100 in 10 s) plus 20 % of them.
func TestRetriesHideAFlakyBackend(t *testing.T) {
	for _, c := range appClients(t) {
		t.Run(c.name, func(t *testing.T) {
			m, app := newResilienceMesh(t)
			const n = 250
			failed := 0
			for range n {
				req, _ := http.NewRequest("GET", "http://"+m.appAddr+"/flaky", nil)
				if resp, _ := do(t, c.c, req); resp.StatusCode != 200 {
					failed++
				}
			}
			if failed*100 >= n {
				t.Errorf("%d of %d requests failed, want under 1 %%", failed, n)
			}
			retried := app.retried.Load()
			if retried < n/10 || app.requests.Load() < n+retried {
				t.Errorf("the apps saw %d requests, %d of them retries; want about 30 %% of %d retried, each numbered in %s",
					app.requests.Load(), retried, n, attemptHeader)
			}
			if got := scrape(t, m.outbound.Metrics, "trellis_route_retries_total", []string{`outcome="retried"`, `reason="status"`}); got != float64(retried) {
				t.Errorf("trellis_route_retries_total counts %v retries, the apps saw %d", got, retried)
			}
		})
	}
}

// With the backend failing every request, retries stay within the
// budget (20 % of the requests plus 10 a second over 10 s), and once it is
// spent a request fails at its first answer, without waiting to retry.
func TestRetryBudgetHoldsWhenEverythingFails(t *testing.T) {
	m, app := newResilienceMesh(t)
	c := &http.Client{Transport: &http.Transport{MaxConnsPerHost: 8}, Timeout: 30 * time.Second}
	t.Cleanup(c.CloseIdleConnections)
	const n, workers = 1000, 8
	took := make([]time.Duration, n)
	elapsed := getAll(t, c, "http://"+m.appAddr+"/down", n, workers, func(i, status int, d time.Duration) bool {
		took[i] = d
		if status != 503 {
			t.Errorf("a request to a backend that is down = %d, want its 503", status)
			return false
		}
		return true
	})
	if elapsed > 10*time.Second {
		t.Fatalf("the run took %v, longer than the budget's window: the bound below does not hold", elapsed)
	}
	retries := app.requests.Load() - n
	if budget := int64(n*retryRatio + retryFloor*retryWindow); retries > budget || retries < retryFloor*retryWindow {
		t.Errorf("%d retries of %d requests, want at least the floor (%d) and at most the budget (%d)", retries, n,
			retryFloor*retryWindow, budget)
	}
	if got := scrape(t, m.outbound.Metrics, "trellis_route_retries_total", []string{`outcome="budget_exhausted"`}); got == 0 {
		t.Error("trellis_route_retries_total counts no retry refused by the budget")
	}
	late := slices.Clone(took[n/2:])
	slices.Sort(late)
	if median := late[len(late)/2]; median >= defaultBackoff {
		t.Errorf("with the budget spent, the median request took %v, want under a backoff (%v): no retry", median, defaultBackoff)
	}
}

// The route's request timeout cuts a slow backend off at its value with
// 504 (flag UT), over HTTP/1.1 and h2c.
func TestRouteTimeout(t *testing.T) {
	m, _ := newResilienceMesh(t)
	for _, c := range appClients(t) {
		t.Run(c.name, func(t *testing.T) {
			req, _ := http.NewRequest("GET", "http://"+m.appAddr+"/slow", nil)
			start := time.Now()
			resp, body := do(t, c.c, req)
			took := time.Since(start)
			if resp.StatusCode != 504 || resp.Header.Get(flagsHeader) != "UT" || !strings.Contains(body, "timeout") {
				t.Errorf("a slow backend = %d %q (flags %q), want 504 UT saying the timeout passed", resp.StatusCode, body, resp.Header.Get(flagsHeader))
			}
			if took < 300*time.Millisecond || took > 350*time.Millisecond {
				t.Errorf("the answer took %v, want the route's 300ms (+50ms)", took)
			}
		})
	}
}

// A gRPC call under a route's timeout ends with DEADLINE_EXCEEDED at the
// timeout, and the app is told the deadline in grpc-timeout; a shorter
// grpc-timeout of the client's wins.
func TestRouteTimeoutGRPC(t *testing.T) {
	m := newTestMesh(t, 1)
	seen := make(chan time.Duration, 2) // what the app had left of its deadline
	srv := grpc.NewServer(grpc.UnknownServiceHandler(func(_ any, s grpc.ServerStream) error {
		var left time.Duration
		if dl, ok := s.Context().Deadline(); ok {
			left = time.Until(dl)
		}
		seen <- left
		select {
		case <-s.Context().Done():
		case <-time.After(2 * time.Second):
		}
		return nil
	}))
	ep := grpcBehind(t, m, m.inbounds[0], srv)
	m.outbound.Update(&meshpb.ProxyConfig{Version: "grpc-timeout",
		Workload: &meshpb.Workload{Namespace: "web", Name: "frontend", Identity: "spiffe://cluster.local/ns/web/sa/default"},
		Services: []*meshpb.Service{dbService("alpha", vip.Addr().String(), meshpb.Protocol_PROTOCOL_GRPC),
			dbService("alpha-v1", "10.98.0.2", meshpb.Protocol_PROTOCOL_GRPC, ep)},
		Routes: routesFrom(t, `
metadata: {name: alpha, namespace: db}
spec:
  parentRefs: [{group: "", kind: Service, name: alpha}]
  rules:
  - timeouts: {request: 300ms}
    backendRefs: [{name: alpha-v1, port: 80}]
`)})
	conn, err := grpc.NewClient(m.appAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	start := time.Now()
	err = conn.Invoke(context.Background(), "/slow.Service/Call", &emptypb.Empty{}, &emptypb.Empty{})
	took := time.Since(start)
	if st, _ := status.FromError(err); st.Code() != codes.DeadlineExceeded || !strings.Contains(st.Message(), "timeout") {
		t.Errorf("a call to a slow backend = %v, want DEADLINE_EXCEEDED from the proxy", err)
	}
	if took < 300*time.Millisecond || took > 350*time.Millisecond {
		t.Errorf("the call ended after %v, want the route's 300ms (+50ms)", took)
	}
	if got := <-seen; got <= 250*time.Millisecond || got > 300*time.Millisecond {
		t.Errorf("the app had %v left of its deadline (grpc-timeout), want the route's 300ms", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_ = conn.Invoke(ctx, "/slow.Service/Call", &emptypb.Empty{}, &emptypb.Empty{})
	if got := <-seen; got <= 0 || got > 100*time.Millisecond {
		t.Errorf("with the client's 100ms deadline the app had %v left, want at most 100ms", got)
	}
}

// A per-try timeout gives up on a slow endpoint and retries on the other:
// every request is answered, by the fast one.
func TestPerTryTimeoutRetriesElsewhere(t *testing.T) {
	m, app := newResilienceMesh(t)
	for _, c := range appClients(t) {
		t.Run(c.name, func(t *testing.T) {
			for range 10 {
				req, _ := http.NewRequest("GET", "http://"+m.appAddr+"/try", nil)
				start := time.Now()
				if body := get(t, c.c, req, 200); body != "alpha-1 " {
					t.Fatalf("GET /try = %q, want alpha-1's answer", body)
				}
				if took := time.Since(start); took > time.Second {
					t.Errorf("GET /try took %v: the per-try timeout (100ms) did not cut the slow attempt", took)
				}
			}
		})
	}
	if app.slowHits.Load() == 0 {
		t.Error("no request went to the slow endpoint first: the test saw no per-try timeout")
	}
}

// A mirror gets a copy of every request, body and all, with "-shadow" in
// its Host; its own failing answers change nothing for the client.
func TestMirrorCopiesWithoutChangingAnswers(t *testing.T) {
	m, app := newResilienceMesh(t)
	const n = 100
	for _, c := range appClients(t) {
		for i := range n {
			req, _ := http.NewRequest("POST", "http://"+m.appAddr+"/mirror", strings.NewReader(fmt.Sprintf("n=%d", i)))
			if body := get(t, c.c, req, 200); body != fmt.Sprintf("alpha-0 n=%d", i) {
				t.Fatalf("%s: POST /mirror = %q, want alpha-0's echo of n=%d", c.name, body, i)
			}
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		app.mu.Lock()
		copies := slices.Clone(app.copies)
		app.mu.Unlock()
		if len(copies) == 2*n || time.Now().After(deadline) {
			if len(copies) != 2*n {
				t.Fatalf("the mirror got %d copies of %d requests", len(copies), 2*n)
			}
			for _, c := range copies {
				if host, body, _ := strings.Cut(c, " "); !strings.HasPrefix(host, "127.0.0.1-shadow:") || !strings.HasPrefix(body, "n=") {
					t.Fatalf("a copy came as %q, want the Host with -shadow and the request's body", c)
				}
			}
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := scrapeWait(t, m.outbound.Metrics, "trellis_route_mirrored_requests_total", []string{`outcome="answered"`}, 2*n); got != 2*n {
		t.Errorf("trellis_route_mirrored_requests_total counts %v answered copies, want %d", got, 2*n)
	}
}

// A body longer than what is kept for a retry reaches the app whole, once:
// its failure is the client's answer, not retried.
func TestLongBodyIsNotRetried(t *testing.T) {
	m, app := newResilienceMesh(t)
	big := bytes.Repeat([]byte("0123456789abcdef"), 2*replayLimit/16)
	for _, c := range appClients(t) {
		before := app.requests.Load()
		req, _ := http.NewRequest("POST", "http://"+m.appAddr+"/big", bytes.NewReader(big))
		if resp, _ := do(t, c.c, req); resp.StatusCode != 503 {
			t.Errorf("%s: POST /big = %d, want the app's 503", c.name, resp.StatusCode)
		}
		app.mu.Lock()
		sum := app.bigSum
		app.mu.Unlock()
		if got := app.requests.Load() - before; got != 1 || sum != sha256.Sum256(big) {
			t.Errorf("%s: the app got %d requests (body whole: %v), want the one, whole", c.name, got, sum == sha256.Sum256(big))
		}
	}
}

// The budget allows its ratio of the requests plus its floor a second
// over its window, and refills as seconds leave it.
func TestRetryBudgetWindow(t *testing.T) {
	for _, tc := range []struct {
		name   string
		limits budgetLimits
		want   int // of 1000 requests
	}{
		{"the default, 20 % plus 10 a second", defaultBudget, 1000*retryRatio + retryFloor*retryWindow},
		{"50 %, no floor", budgetLimits{ratio: 0.5}, 500},
		{"2.5 % plus 3 a second", budgetLimits{ratio: 0.025, floor: 3}, 25 + 30},
		{"none", budgetLimits{}, 0},
	} {
		now := time.Unix(1000, 0)
		b := &retryBudget{budgetLimits: tc.limits, now: func() time.Time { return now }}
		for range 1000 {
			b.request()
		}
		allowed := 0
		for allowed < 10000 && b.withdraw() { // bounded: a budget that never runs out fails, not hangs
			allowed++
		}
		if allowed != tc.want {
			t.Errorf("%s: the budget allowed %d retries of 1000 requests, want %d", tc.name, allowed, tc.want)
		}
		now = now.Add(retryWindow * time.Second)
		for range 10 {
			b.request()
		}
		if got := b.withdraw(); got != (tc.limits != budgetLimits{}) {
			t.Errorf("%s: once the window passed, a retry of 10 new requests allowed = %v, want %v", tc.name, got, !got)
		}
	}
}

// getAll sends n GETs to url from workers goroutines and returns how long
// they took. check, when given, sees each answer (the request's index,
// its status and how long it took) and stops its worker by returning
// false; a transport error stops it too.
func getAll(t *testing.T, c *http.Client, url string, n, workers int, check func(i, status int, took time.Duration) bool) time.Duration {
	t.Helper()
	var next atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for range workers {
		wg.Go(func() {
			for i := int(next.Add(1)) - 1; i < n; i = int(next.Add(1)) - 1 {
				t0 := time.Now()
				resp, err := c.Get(url)
				if err != nil {
					t.Error(err)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if check != nil && !check(i, resp.StatusCode, time.Since(t0)) {
					return
				}
			}
		})
	}
	wg.Wait()
	return time.Since(start)
}

// A DestinationRule's retryBudget sets the share of requests retried.
// With the backend failing every request (each may be retried twice) and
// no floor, the budget binds: every request asks for a retry after it is
// counted, and one is refused only while the retries reach percent of
// the requests counted, so the retries end up within a few of percent
// of n (one per worker in flight, and the first requests' rounding), and
// never above it.
func TestRetryBudgetFromPolicy(t *testing.T) {
	const n, workers = 200, 8
	run := func(percent float64) (retries int64, m *testMesh) {
		m, app := newResilienceMesh(t)
		cfg := routedConfig(t, m, resilienceRoutes)
		for _, s := range cfg.GetServices() {
			if s.GetName() == "alpha-both" { // /down's backend, whose budget its retries draw on
				s.TrafficPolicy = &meshpb.TrafficPolicy{Source: "db/alpha-both", RetryBudget: &meshpb.RetryBudget{Percent: percent}}
			}
		}
		m.outbound.Update(cfg)
		c := &http.Client{Transport: &http.Transport{MaxConnsPerHost: workers}, Timeout: 30 * time.Second}
		t.Cleanup(c.CloseIdleConnections)
		elapsed := getAll(t, c, "http://"+m.appAddr+"/down", n, workers, nil)
		if elapsed > retryWindow*time.Second {
			t.Fatalf("%v %%: the run took %v, longer than the budget's window: the bounds do not hold", percent, elapsed)
		}
		return app.requests.Load() - n, m
	}
	generous, m := run(50)
	if generous > n/2 || generous < n/2-2*workers {
		t.Errorf("50 %%, no floor: %d retries of %d failing requests, want %d to %d", generous, n, n/2-2*workers, n/2)
	}
	if got := scrape(t, m.outbound.Metrics, "trellis_route_retries_total", []string{`outcome="retried"`}); got != float64(generous) {
		t.Errorf("50 %%: trellis_route_retries_total counts %v retries, the apps saw %d", got, generous)
	}
	stingy, m := run(5)
	t.Logf("retries of %d failing requests: %d at 50 %%, %d at 5 %%", n, generous, stingy)
	if stingy > n/20 || stingy >= generous {
		t.Errorf("5 %%, no floor: %d retries of %d failing requests, want at most %d, fewer than 50 %%'s %d", stingy, n, n/20, generous)
	}
	// Each request asks for a retry at least once; the budget refuses all
	// but the few it lets through, and says so.
	if got := scrape(t, m.outbound.Metrics, "trellis_route_retries_total", []string{`outcome="budget_exhausted"`}); got < n-float64(stingy) {
		t.Errorf("5 %%: trellis_route_retries_total counts %v retries refused by the budget, want at least %d", got, n-stingy)
	}
}

// A service port keeps its retry budget, and the retries counted in it,
// across configs that leave the budget as it is; a config that changes
// it makes a new one.
func TestRetryBudgetKeptAcrossConfigs(t *testing.T) {
	m, _ := newResilienceMesh(t)
	both := svcPort{"db", "alpha-both", 80, ""}
	budget := func(rb *meshpb.RetryBudget) *retryBudget {
		cfg := routedConfig(t, m, resilienceRoutes)
		for _, s := range cfg.GetServices() {
			if s.GetName() == "alpha-both" && rb != nil {
				s.TrafficPolicy = &meshpb.TrafficPolicy{Source: "db/alpha-both", RetryBudget: rb}
			}
		}
		m.outbound.Update(cfg)
		return m.outbound.routes.Load().byService[both].budget
	}
	first := budget(&meshpb.RetryBudget{Percent: 30, MinRetriesPerSecond: 1})
	if first.budgetLimits != (budgetLimits{ratio: 0.3, floor: 1}) {
		t.Errorf("budget limits = %+v, want 30 %% plus 1 a second", first.budgetLimits)
	}
	if again := budget(&meshpb.RetryBudget{Percent: 30, MinRetriesPerSecond: 1}); again != first {
		t.Error("an unchanged retryBudget made a new budget; want the one with its counts kept")
	}
	if changed := budget(&meshpb.RetryBudget{Percent: 40, MinRetriesPerSecond: 1}); changed == first || changed.ratio != 0.4 {
		t.Errorf("a changed retryBudget kept the budget %+v; want a new one at 40 %%", changed.budgetLimits)
	}
	if unset := budget(nil); unset.budgetLimits != defaultBudget {
		t.Errorf("without a retryBudget the limits are %+v, want the default %+v", unset.budgetLimits, defaultBudget)
	}
}

// grpc-timeout values read and write as the gRPC protocol has them.
func TestGRPCTimeoutFormat(t *testing.T) {
	for _, d := range []time.Duration{time.Nanosecond, 300 * time.Millisecond, 2 * time.Hour, 1000 * time.Hour} {
		got, ok := parseGRPCTimeout(formatGRPCTimeout(d))
		if !ok || got != d {
			t.Errorf("%v written as %q reads back as %v", d, formatGRPCTimeout(d), got)
		}
	}
	if got, ok := parseGRPCTimeout("99999999H"); !ok || got <= 0 {
		t.Errorf("grpc-timeout 99999999H read as %v, %v: want the longest Duration", got, ok)
	}
	for _, bad := range []string{"", "1", "123456789S", "10x", "-1S", "1.5S"} {
		if _, ok := parseGRPCTimeout(bad); ok {
			t.Errorf("grpc-timeout %q read as valid", bad)
		}
	}
}

// A VirtualService's fault injection: an abort of 50 % answers half the
// requests itself (503, flag FI) over HTTP/1.1 and h2c alike, and a delay
// holds every request for its time (flag DI in the metrics).
func TestFaultInjection(t *testing.T) {
	m := newRoutedMesh(t, `
kind: VirtualService
metadata: {name: alpha, namespace: db}
spec:
  hosts: [alpha]
  http:
  - match: [{uri: {prefix: /abort}}]
    fault: {abort: {httpStatus: 503, percentage: {value: 50}}}
    route: [{destination: {host: alpha-v1}}]
  - match: [{uri: {prefix: /delay}}]
    fault: {delay: {fixedDelay: 200ms}}
    route: [{destination: {host: alpha-v1}}]
`)
	m.outbound.Metrics = telemetry.New("cluster.local")
	for _, c := range appClients(t) {
		t.Run(c.name, func(t *testing.T) {
			const n = 600
			aborted := 0
			for range n {
				req, _ := http.NewRequest("GET", "http://"+m.appAddr+"/abort", nil)
				resp, body := do(t, c.c, req)
				switch {
				case resp.StatusCode == 503 && resp.Header.Get(flagsHeader) == "FI":
					aborted++
				case resp.StatusCode != 200 || body != "alpha-0":
					t.Fatalf("GET /abort = %d %q (flags %q), want alpha-0's answer or the fault's 503 FI",
						resp.StatusCode, body, resp.Header.Get(flagsHeader))
				}
			}
			if aborted < n*45/100 || aborted > n*55/100 {
				t.Errorf("%d of %d requests aborted, want 50 %% ± 5 points", aborted, n)
			}
			for range 3 {
				req, _ := http.NewRequest("GET", "http://"+m.appAddr+"/delay", nil)
				start := time.Now()
				if body := get(t, c.c, req, 200); body != "alpha-0" || time.Since(start) < 200*time.Millisecond {
					t.Errorf("GET /delay = %q after %v, want alpha-0's answer after the fault's 200ms", body, time.Since(start))
				}
			}
		})
	}
	if got := scrapeWait(t, m.outbound.Metrics, "istio_requests_total", []string{`response_flags="DI"`}, 6); got != 6 {
		t.Errorf("istio_requests_total counts %v delayed requests (flag DI), want 6", got)
	}
}

// An answer to retry whose body then stalls does not hold the retry: the
// answer is dropped unread and the next endpoint answers at once.
func TestRetryDoesNotWaitForAStalledBody(t *testing.T) {
	var n atomic.Int32
	m := newRoutedMeshApp(t, `
metadata: {name: alpha, namespace: db}
spec:
  parentRefs: [{group: "", kind: Service, name: alpha, port: 80}]
  rules:
  - retry: {codes: [503], attempts: 2, backoff: 10ms}
    backendRefs: [{name: alpha-both, port: 80}]
`, func(name string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if n.Add(1) == 1 {
				w.WriteHeader(503)
				w.(http.Flusher).Flush()
				select {
				case <-r.Context().Done():
				case <-time.After(3 * time.Second):
				}
				return
			}
			fmt.Fprint(w, name)
		})
	})
	req, _ := http.NewRequest("GET", "http://"+m.appAddr+"/", nil)
	start := time.Now()
	get(t, http.DefaultClient, req, 200)
	if took := time.Since(start); took > time.Second {
		t.Errorf("the retry came after %v: it waited for the stalled 503's body", took)
	}
}

// A request timeout reaches an HTTP/1.1 client whose upload stalls: the
// 504 goes out at the timeout, not when the body ends.
func TestRequestTimeoutWithAStalledUpload(t *testing.T) {
	m := newRoutedMeshApp(t, `
metadata: {name: alpha, namespace: db}
spec:
  parentRefs: [{group: "", kind: Service, name: alpha, port: 80}]
  rules:
  - timeouts: {request: 300ms}
    backendRefs: [{name: alpha-v1, port: 80}]
`, func(string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.Copy(io.Discard, r.Body) })
	})
	conn, err := net.Dial("tcp", m.appAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	start := time.Now()
	fmt.Fprintf(conn, "PUT /up HTTP/1.1\r\nHost: alpha\r\nContent-Length: 100000\r\n\r\n%s", strings.Repeat("x", 1000))
	conn.SetReadDeadline(time.Now().Add(3 * time.Second))
	line, err := bufio.NewReader(conn).ReadString('\n')
	if took := time.Since(start); err != nil || !strings.HasPrefix(line, "HTTP/1.1 504") || took > time.Second {
		t.Errorf("a stalled upload got %q (%v) after %v, want 504 at the route's 300ms", line, err, took)
	}
}

// Requests the app gave up on say nothing of the endpoint: they do not
// eject it, however many.
func TestClientCancelsDoNotEject(t *testing.T) {
	m := policyMesh(t, 2, &meshpb.TrafficPolicy{Source: "db/alpha",
		OutlierDetection: &meshpb.OutlierDetection{ConsecutiveGateway: 3, BaseEjectionMs: 30000, MaxEjectionPercent: 50}},
		func(name string) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				select {
				case <-r.Context().Done():
				case <-time.After(200 * time.Millisecond):
				}
				fmt.Fprint(w, name)
			})
		})
	for _, c := range appClients(t) {
		for range 6 {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
			req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+m.appAddr+"/", nil)
			if resp, err := c.c.Do(req); err == nil {
				resp.Body.Close()
			}
			cancel()
		}
	}
	time.Sleep(100 * time.Millisecond) // the proxy sees the cancels after the client does
	if ejected(m, 0) || ejected(m, 1) {
		t.Errorf("requests the app cancelled ejected an endpoint (alpha-0 %v, alpha-1 %v)", ejected(m, 0), ejected(m, 1))
	}
}

// What is retried: listed statuses whatever the method (a gRPC call
// answered trailers-only UNAVAILABLE is a 503; a grpc-status elsewhere is
// not), per-try timeouts, failures to connect; a broken connection under
// an idempotent method only; never a full connection pool, a client gone
// or a body cut short.
func TestRetryReason(t *testing.T) {
	p := &routing.Retry{Codes: []int{503}}
	dial := &net.OpError{Op: "dial", Err: errors.New("connection refused")}
	reset := errors.New("connection reset by peer")
	for _, c := range []struct {
		method     string
		grpc       bool // the request's content-type is application/grpc
		code       int
		grpcStatus string
		body       int64 // the answer's ContentLength
		err        error
		want       string
	}{
		{"POST", false, 503, "", -1, nil, "status"},
		{"GET", false, 500, "", -1, nil, ""},
		{"POST", true, 200, "14", 0, nil, "status"},
		{"POST", true, 200, "13", 0, nil, ""},
		{"POST", true, 200, "14", -1, nil, ""}, // not trailers-only: the status comes after the answer
		{"POST", false, 200, "14", 0, nil, ""}, // not a gRPC call: only a header
		{"POST", false, 0, "", 0, errTryTimeout, "timeout"},
		{"POST", false, 0, "", 0, dial, "connect"},
		{"GET", false, 0, "", 0, reset, "connect"},
		{"POST", false, 0, "", 0, reset, ""},
		{"GET", false, 0, "", 0, fmt.Errorf("x: %w", errOverflow), ""},
		{"GET", false, 0, "", 0, context.Canceled, ""},
		{"GET", false, 0, "", 0, errAttemptOver, ""},
	} {
		req, _ := http.NewRequest(c.method, "http://alpha.db/", nil)
		if c.grpc {
			req.Header.Set("Content-Type", "application/grpc")
		}
		var resp *http.Response
		if c.err == nil {
			resp = &http.Response{StatusCode: c.code, ContentLength: c.body, Header: http.Header{}}
			if c.grpcStatus != "" {
				resp.Header.Set("Grpc-Status", c.grpcStatus)
			}
		}
		if got := retryReason(req, resp, c.err, p); got != c.want {
			t.Errorf("%s (gRPC %v) with %d grpc-status %q / %v: reason %q, want %q", c.method, c.grpc, c.code, c.grpcStatus, c.err, got, c.want)
		}
	}
}
