package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
)

// clientConfig is one run of the client.
type clientConfig struct {
	// URL is http://, https:// or grpc://, then HOST[:PORT][PATH]; the
	// path is sent exactly as given.
	URL string
	// Count is how many requests to make, at most maxInFlight at once;
	// 0 means 1.
	Count int
	// Method is the HTTP method; "" means GET.
	Method string
	// Header is sent with every request (as gRPC metadata for grpc://);
	// a Host header sets the request's host (the gRPC authority) instead.
	Header http.Header
	// Timeout bounds each request; 0 means 5s.
	Timeout time.Duration
}

const (
	maxInFlight = 20
	runTimeout  = time.Minute // bounds a whole run
)

// parseClientArgs reads the echo app's client arguments: a URL and flags,
// in any order (the suite puts the URL first).
func parseClientArgs(args []string) (clientConfig, error) {
	cfg := clientConfig{Header: http.Header{}}
	fs := flag.NewFlagSet("client", flag.ContinueOnError)
	fs.IntVar(&cfg.Count, "count", 1, "requests to make")
	fs.StringVar(&cfg.Method, "method", "", "HTTP method (default GET)")
	fs.DurationVar(&cfg.Timeout, "timeout", 5*time.Second, "timeout of each request")
	fs.Var(headerFlag(cfg.Header), "H", "header Name:Value to send (Host sets the host); repeatable")
	fs.Var(headerFlag(cfg.Header), "header", "same as -H")
	var urls []string
	for {
		if err := fs.Parse(args); err != nil {
			return clientConfig{}, err
		}
		if fs.NArg() == 0 {
			break
		}
		urls = append(urls, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if len(urls) != 1 {
		return clientConfig{}, fmt.Errorf("client: got %d URLs %q, want one (client URL [flags])", len(urls), urls)
	}
	cfg.URL = urls[0]
	if cfg.Count < 0 || cfg.Timeout < 0 {
		return clientConfig{}, fmt.Errorf("client: --count %d and --timeout %s must not be negative", cfg.Count, cfg.Timeout)
	}
	return cfg, nil
}

// headerFlag adds each Name:Value it is given to its header.
type headerFlag http.Header

func (h headerFlag) String() string { return "" }

func (h headerFlag) Set(s string) error {
	name, value, ok := strings.Cut(s, ":")
	if !ok || strings.TrimSpace(name) == "" {
		return fmt.Errorf("header %q: want Name:Value", s)
	}
	http.Header(h).Add(strings.TrimSpace(name), strings.TrimSpace(value))
	return nil
}

// sender makes request i and returns its lines of output.
type sender func(ctx context.Context, i int) (string, error)

// runClient makes cfg's requests and writes their output to w in order,
// each followed by a blank line. When any request fails it writes nothing
// and says how many failed, and the first error.
func runClient(ctx context.Context, cfg clientConfig, w io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, runTimeout)
	defer cancel()
	count, timeout := max(cfg.Count, 1), cfg.Timeout
	if timeout == 0 {
		timeout = 5 * time.Second
	}
	var send sender
	var closeSender func()
	var err error
	switch scheme, _, _ := strings.Cut(cfg.URL, "://"); strings.ToLower(scheme) {
	case "http", "https":
		send, closeSender = httpSender(cfg)
	case "grpc":
		send, closeSender, err = grpcSender(cfg)
	default:
		err = fmt.Errorf("client: URL %q: want http://, https:// or grpc://", cfg.URL)
	}
	if err != nil {
		return err
	}
	defer closeSender()

	outs, errs := make([]string, count), make([]error, count)
	slots := make(chan struct{}, maxInFlight)
	var wg sync.WaitGroup
	for i := range count {
		slots <- struct{}{}
		wg.Go(func() {
			defer func() { <-slots }()
			rctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			outs[i], errs[i] = send(rctx, i)
		})
	}
	wg.Wait()
	var failed []error
	for _, err := range errs {
		if err != nil {
			failed = append(failed, err)
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("%d/%d requests failed; first: %w", len(failed), count, failed[0])
	}
	for _, out := range outs {
		if _, err := io.WriteString(w, out+"\n"); err != nil {
			return err
		}
	}
	return nil
}

// httpSender sends each request on a new connection, does not follow
// redirects, and skips certificate verification.
func httpSender(cfg clientConfig) (sender, func()) {
	header := cfg.Header.Clone()
	host := header.Get("Host")
	header.Del("Host")
	method := cfg.Method
	if method == "" {
		method = http.MethodGet
	}
	tlsConfig := &tls.Config{InsecureSkipVerify: true}
	if host != "" {
		tlsConfig.ServerName, _, _ = strings.Cut(host, ":")
	}
	tr := &http.Transport{DisableKeepAlives: true, TLSClientConfig: tlsConfig,
		DialContext: (&net.Dialer{Timeout: 2 * time.Second}).DialContext}
	client := &http.Client{Transport: tr,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	// The path goes in the request line as given: Go would clean a parsed one.
	origin, path := cfg.URL, ""
	if _, rest, _ := strings.Cut(cfg.URL, "://"); strings.Contains(rest, "/") {
		path = rest[strings.Index(rest, "/"):]
		origin = strings.TrimSuffix(cfg.URL, path)
	}
	return func(ctx context.Context, i int) (string, error) {
		req, err := http.NewRequestWithContext(ctx, method, origin, nil)
		if err != nil {
			return "", fmt.Errorf("request %s: %w", cfg.URL, err)
		}
		req.URL.Opaque = path
		req.Host = host
		req.Header = header.Clone()
		resp, err := client.Do(req)
		if err != nil {
			var ue *url.Error // names the URL as rewritten for the raw path
			if errors.As(err, &ue) {
				err = ue.Err
			}
			return "", fmt.Errorf("%s %s: %w", method, cfg.URL, err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			return "", fmt.Errorf("read the answer of %s: %w", cfg.URL, err)
		}
		var b strings.Builder
		fmt.Fprintf(&b, "[%d] Url=%s\n", i, cfg.URL)
		writeHeaderLines(&b, i, "Header", header)
		fmt.Fprintf(&b, "[%d] StatusCode=%d\n", i, resp.StatusCode)
		writeHeaderLines(&b, i, "ResponseHeader", resp.Header)
		writeBodyLines(&b, i, body)
		return b.String(), nil
	}, tr.CloseIdleConnections
}

// grpcSender calls echoMethod over one plaintext HTTP/2 connection, as the
// echo app's client does. Its output carries no status of its own: the
// server's answer has StatusCode=200.
func grpcSender(cfg clientConfig) (sender, func(), error) {
	addr := cfg.URL[len("grpc://"):]
	addr, _, _ = strings.Cut(addr, "/")
	opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithDefaultCallOptions(grpc.ForceCodec(rawCodec{}))}
	header := cfg.Header.Clone()
	if host := header.Get("Host"); host != "" {
		opts = append(opts, grpc.WithAuthority(host))
	}
	header.Del("Host")
	conn, err := grpc.NewClient("passthrough:///"+addr, opts...)
	if err != nil {
		return nil, nil, fmt.Errorf("client for %s: %w", cfg.URL, err)
	}
	md := metadata.MD{}
	for k, vs := range header {
		md.Append(k, vs...)
	}
	return func(ctx context.Context, i int) (string, error) {
		in, out := []byte("HelloWorld"), []byte(nil) // the echo app client's message
		var respMD metadata.MD
		err := conn.Invoke(metadata.NewOutgoingContext(ctx, md), echoMethod, &in, &out, grpc.Header(&respMD))
		if err != nil {
			return "", fmt.Errorf("call %s: %w", cfg.URL, err)
		}
		var b strings.Builder
		fmt.Fprintf(&b, "[%d] Url=%s\n", i, cfg.URL)
		writeHeaderLines(&b, i, "Header", header)
		writeBodyLines(&b, i, out)
		writeHeaderLines(&b, i, "ResponseHeader", http.Header(respMD))
		return b.String(), nil
	}, func() { conn.Close() }, nil
}

// writeHeaderLines writes `[i] FIELD=Name:value` for each value of h, by
// name.
func writeHeaderLines(b *strings.Builder, i int, field string, h http.Header) {
	for _, k := range slices.Sorted(maps.Keys(h)) {
		for _, v := range h[k] {
			fmt.Fprintf(b, "[%d] %s=%s:%s\n", i, field, k, v)
		}
	}
}

// writeBodyLines writes `[i body] line` for each non-empty line of body,
// so that no blank line (the separator of requests) comes from it.
func writeBodyLines(b *strings.Builder, i int, body []byte) {
	for line := range strings.SplitSeq(string(body), "\n") {
		if line = strings.TrimSuffix(line, "\r"); line != "" {
			fmt.Fprintf(b, "[%d body] %s\n", i, line)
		}
	}
}
