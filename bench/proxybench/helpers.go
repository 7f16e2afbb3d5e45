package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	"google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"

	"github.com/trellis-mesh/trellis/internal/h2flood"
	"github.com/trellis-mesh/trellis/internal/safehttp"
)

// The backend's ports: HTTP (1.1 and h2c) on 8080, three gRPC replicas.
var grpcPorts = []int{9001, 9002, 9003}

const httpPort = 8080

// body is the backend's 1 kB answer.
var body = make([]byte, 1024)

// runBackend serves the same backend to every arm: 1 kB over HTTP/1.1 and
// h2c on :8080, and grpc.health.v1 (with reflection, for ghz) on three
// ports, counting the calls each port answers (GET /counts).
func runBackend() error {
	counts := make([]atomic.Int64, len(grpcPorts))
	errc := make(chan error, len(grpcPorts)+1)
	for i, port := range grpcPorts {
		ln, err := net.Listen("tcp", ":"+strconv.Itoa(port))
		if err != nil {
			return err
		}
		s := grpc.NewServer(grpc.MaxConcurrentStreams(1000), grpc.MaxRecvMsgSize(1<<20), grpc.ConnectionTimeout(10*time.Second),
			grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
				counts[i].Add(1)
				return h(ctx, req)
			}))
		grpc_health_v1.RegisterHealthServer(s, health.NewServer())
		reflection.Register(s)
		go func() { errc <- s.Serve(ln) }()
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/counts", func(w http.ResponseWriter, _ *http.Request) {
		out := make([]int64, len(counts))
		for i := range counts {
			out[i] = counts[i].Load()
		}
		_ = json.NewEncoder(w).Encode(out)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/octet-stream")
		_, _ = w.Write(body)
	})
	srv := safehttp.Server(mux)
	srv.Protocols = new(http.Protocols)
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	srv.IdleTimeout = 10 * time.Minute // the idle-connection phase holds connections
	ln, err := net.Listen("tcp", ":"+strconv.Itoa(httpPort))
	if err != nil {
		return err
	}
	go func() { errc <- srv.Serve(ln) }()
	return <-errc
}

// runGet fetches a URL and prints the body; an answer other than 200 is an
// error. The harness runs it inside a namespace.
func runGet(args []string) error {
	if len(args) != 1 {
		return errors.New("usage: proxybench get URL")
	}
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get(args[0])
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(os.Stdout, resp.Body); err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", args[0], resp.Status)
	}
	return nil
}

// runIdle opens n keep-alive connections to a URL, makes one request on
// each, prints "ready" and holds them, idle, until its standard input
// closes.
func runIdle(args []string) error {
	if len(args) != 2 {
		return errors.New("usage: proxybench idle N URL")
	}
	n, err := strconv.Atoi(args[0])
	if err != nil || n <= 0 {
		return fmt.Errorf("idle: %q is not a positive number", args[0])
	}
	u, err := url.Parse(args[1])
	if err != nil {
		return err
	}
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	req := "GET " + u.RequestURI() + " HTTP/1.1\r\nHost: " + u.Host + "\r\n\r\n"
	for i := range n {
		c, err := net.DialTimeout("tcp", u.Host, 5*time.Second)
		if err != nil {
			return fmt.Errorf("connection %d: %w", i, err)
		}
		conns = append(conns, c)
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(c, req); err != nil {
			return fmt.Errorf("connection %d: %w", i, err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			return fmt.Errorf("connection %d: %w", i, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || resp.Close {
			return fmt.Errorf("connection %d: %s (keep-alive: %v)", i, resp.Status, !resp.Close)
		}
		c.SetDeadline(time.Time{})
	}
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
	return nil
}

// runFlood floods the HTTP/2 listener of a URL with one kind of flood for
// a while, opening a new connection each time the server cuts one off,
// and prints how many it opened, how many ended in a GOAWAY and how many
// the server refused.
func runFlood(args []string) error {
	if len(args) != 3 {
		return errors.New("usage: proxybench flood KIND URL DURATION")
	}
	u, err := url.Parse(args[1])
	if err != nil {
		return err
	}
	d, err := time.ParseDuration(args[2])
	if err != nil {
		return err
	}
	step, err := h2flood.New(args[0], u.Host)
	if err != nil {
		return err
	}
	var counts struct{ Connections, Cut, Refused int }
	for end := time.Now().Add(d); time.Until(end) > 0; {
		res, err := h2flood.Run(h2flood.Dial(u.Host), step, 1000000, time.Until(end), nil)
		if err != nil { // a proxy under attack may refuse connections: that is a result too
			counts.Refused++
			time.Sleep(10 * time.Millisecond)
			continue
		}
		counts.Connections++
		if res.GoAway() {
			counts.Cut++
		}
	}
	return json.NewEncoder(os.Stdout).Encode(counts)
}
