// Command hello is the bed tests' workload. On 8080 it answers / with its
// pod's name, /resolve?name=N with what the pod's resolver says N is,
// /fetch?url=U&n=N[&proto=h2c|grpc] by calling U N times over one
// connection (HTTP/1.1 keep-alive, HTTP/2 without TLS, or gRPC to
// host:port) and answering one line per call (its status and answer, or
// the error), and /load?url=U&rps=R&seconds=S by calling U at R per second
// for S seconds and answering how many calls got which status. On 9090 it
// serves gRPC: /hello.Hello/Who answers the pod's name. On SIGTERM it
// keeps serving for 3 s (while its endpoint is withdrawn), then stops.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

func main() {
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from %s (%s)\n", os.Getenv("POD_NAME"), r.Proto)
	})
	mux.HandleFunc("/resolve", func(w http.ResponseWriter, r *http.Request) {
		addrs, err := net.LookupHost(r.URL.Query().Get("name"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		fmt.Fprintln(w, addrs)
	})
	mux.HandleFunc("/fetch", fetch)
	mux.HandleFunc("/load", load)
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	srv := &http.Server{Addr: ":8080", Handler: mux, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: time.Minute,
		WriteTimeout: 5 * time.Minute, MaxHeaderBytes: 16 << 10, Protocols: &protocols}
	gs := grpc.NewServer(grpc.ForceServerCodec(rawCodec{}), grpc.MaxConcurrentStreams(100), grpc.ConnectionTimeout(5*time.Second), grpc.MaxRecvMsgSize(64<<10))
	gs.RegisterService(&grpc.ServiceDesc{ServiceName: "hello.Hello", HandlerType: (*any)(nil),
		Methods: []grpc.MethodDesc{{MethodName: "Who", Handler: func(_ any, _ context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			var in []byte
			if err := dec(&in); err != nil {
				return nil, err
			}
			out := []byte(os.Getenv("POD_NAME"))
			return &out, nil
		}}}}, struct{}{})
	gl, err := net.Listen("tcp", ":9090")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	go func() { _ = gs.Serve(gl) }()
	go func() {
		stop := make(chan os.Signal, 1)
		signal.Notify(stop, syscall.SIGTERM)
		<-stop
		time.Sleep(3 * time.Second)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		gs.GracefulStop()
		_ = srv.Shutdown(ctx)
	}()
	if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

// rawCodec carries []byte messages as they are: the test needs no
// protobuf schema.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return *(v.(*[]byte)), nil }
func (rawCodec) Unmarshal(data []byte, v any) error {
	*(v.(*[]byte)) = append([]byte(nil), data...)
	return nil
}
func (rawCodec) Name() string { return "proto" } // content-type application/grpc+proto

// caller calls one URL (or gRPC target) over one connection.
type caller struct {
	call  func() (string, error)
	dials int
	close func()
}

func newCaller(target, proto string) (*caller, error) {
	c := &caller{}
	if proto == "grpc" {
		conn, err := grpc.NewClient("passthrough:///"+target, grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
				c.dials++
				return (&net.Dialer{}).DialContext(ctx, "tcp", addr)
			}))
		if err != nil {
			return nil, err
		}
		c.close = func() { conn.Close() }
		c.call = func() (string, error) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			in, out := []byte("who"), []byte(nil)
			if err := conn.Invoke(ctx, "/hello.Hello/Who", &in, &out, grpc.ForceCodec(rawCodec{})); err != nil {
				return status.Code(err).String(), err
			}
			return "OK hello from " + string(out), nil
		}
		return c, nil
	}
	var protocols http.Protocols
	if proto == "h2c" {
		protocols.SetUnencryptedHTTP2(true)
	} else {
		protocols.SetHTTP1(true)
	}
	tr := &http.Transport{Protocols: &protocols, MaxConnsPerHost: 1, MaxIdleConnsPerHost: 1,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c.dials++
			return (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, network, addr)
		}}
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	c.close = tr.CloseIdleConnections
	c.call = func() (string, error) {
		resp, err := client.Get(target)
		if err != nil {
			return "error", err
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
		resp.Body.Close()
		return strconv.Itoa(resp.StatusCode) + " " + strings.TrimSpace(string(body)), nil
	}
	return c, nil
}

func fetch(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	n, _ := strconv.Atoi(q.Get("n"))
	n = min(max(n, 1), 1000)
	c, err := newCaller(q.Get("url"), q.Get("proto"))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	defer c.close()
	var out strings.Builder
	for range n {
		answer, err := c.call()
		if err != nil {
			fmt.Fprintf(&out, "error: %s %v\n", answer, err)
			continue
		}
		fmt.Fprintln(&out, answer)
	}
	fmt.Fprintf(w, "connections: %d\n%s", c.dials, out.String())
}

// load calls the target at a fixed rate from a few callers (one
// connection each) and reports the outcomes, the first errors in full.
func load(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	rps, _ := strconv.Atoi(q.Get("rps"))
	secs, _ := strconv.Atoi(q.Get("seconds"))
	rps, secs = min(max(rps, 1), 1000), min(max(secs, 1), 120)
	const workers = 4
	var mu sync.Mutex
	counts := map[string]int{}
	var firstErrors []string
	var wg sync.WaitGroup
	deadline := time.Now().Add(time.Duration(secs) * time.Second)
	for range workers {
		c, err := newCaller(q.Get("url"), q.Get("proto"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		wg.Go(func() {
			defer c.close()
			tick := time.NewTicker(time.Second * workers / time.Duration(rps))
			defer tick.Stop()
			for time.Now().Before(deadline) {
				<-tick.C
				answer, err := c.call()
				outcome, _, _ := strings.Cut(answer, " ")
				mu.Lock()
				counts[outcome]++
				if (err != nil || (outcome != "200" && outcome != "OK")) && len(firstErrors) < 5 {
					firstErrors = append(firstErrors, fmt.Sprintf("%s %v", answer, err))
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	keys := make([]string, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(w, "%s %d\n", k, counts[k])
	}
	for _, e := range firstErrors {
		fmt.Fprintf(w, "first error: %s\n", e)
	}
}
