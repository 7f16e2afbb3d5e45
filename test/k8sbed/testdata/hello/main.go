// Command hello is the bed tests' workload. It answers / with its pod's
// name, /resolve?name=N with what the pod's resolver says N is, and
// /fetch?url=U&n=N[&proto=h2c] by fetching U N times over one connection
// (HTTP/1.1 keep-alive, or HTTP/2 without TLS) and answering one line per
// response: its status and body, or the error.
package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

func main() {
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from %s (%s)\n", os.Getenv("POD_NAME"), r.Proto)
	})
	http.HandleFunc("/resolve", func(w http.ResponseWriter, r *http.Request) {
		addrs, err := net.LookupHost(r.URL.Query().Get("name"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		fmt.Fprintln(w, addrs)
	})
	http.HandleFunc("/fetch", fetch)
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	srv := &http.Server{Addr: ":8080", ReadHeaderTimeout: 5 * time.Second, IdleTimeout: time.Minute,
		WriteTimeout: 60 * time.Second, MaxHeaderBytes: 16 << 10, Protocols: &protocols}
	if err := srv.ListenAndServe(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func fetch(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	n, _ := strconv.Atoi(q.Get("n"))
	n = min(max(n, 1), 1000)
	var protocols http.Protocols
	if q.Get("proto") == "h2c" {
		protocols.SetUnencryptedHTTP2(true)
	} else {
		protocols.SetHTTP1(true)
	}
	dials := 0
	tr := &http.Transport{Protocols: &protocols, MaxConnsPerHost: 1, MaxIdleConnsPerHost: 1,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			dials++
			return (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, network, addr)
		}}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	var out strings.Builder
	for range n {
		resp, err := client.Get(q.Get("url"))
		if err != nil {
			fmt.Fprintf(&out, "error: %v\n", err)
			continue
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
		resp.Body.Close()
		fmt.Fprintf(&out, "%d %s\n", resp.StatusCode, strings.TrimSpace(string(body)))
	}
	fmt.Fprintf(w, "connections: %d\n%s", dials, out.String())
}
