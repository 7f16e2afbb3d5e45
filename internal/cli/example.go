package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/trellis-mesh/trellis/internal/safehttp"
)

// newExampleCmd holds the example workloads the manifests under examples/
// run, so trying Trellis needs nothing outside this module. Hidden: these
// are samples, not part of the CLI's contract.
func newExampleCmd(o *options) *cobra.Command {
	cmd := &cobra.Command{Use: "example", Short: "Example workloads used by examples/", Hidden: true}
	var addr string
	hello := &cobra.Command{
		Use:   "hello-server",
		Short: "HTTP server answering every request with its pod name",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runHelloServer(cmd.Context(), o, addr)
		},
	}
	hello.Flags().StringVar(&addr, "listen", ":8080", "address to listen on")
	// idle is a client pod's main process where the image has no shell
	// (trellis-demo): it waits to be stopped, and others are exec'd beside it.
	idle := &cobra.Command{
		Use:   "idle",
		Short: "Wait until stopped (SIGTERM or SIGINT)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			<-ctx.Done()
			return nil
		},
	}
	cmd.AddCommand(hello, idle, newPortsServerCmd(o), newProbeCmd(o), newLoadCmd(o))
	cmd.AddCommand(newGraphCmds(o)...)
	return cmd
}

func runHelloServer(ctx context.Context, o *options, addr string) error {
	name := os.Getenv("POD_NAME")
	if name == "" {
		name, _ = os.Hostname()
	}
	srv := safehttp.Server(helloMux(name))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	fmt.Fprintf(o.out, "hello-server %s listening on %s\n", name, ln.Addr())
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// helloMux is hello-server's handler; it answers as name.
func helloMux(name string) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintf(w, "hello from %s\n", name) })
	// /upload reads a body of any size as it streams in and says how much
	// arrived: for trying large transfers through the mesh.
	mux.HandleFunc("/upload", func(w http.ResponseWriter, r *http.Request) {
		_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(10 * time.Minute))
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			http.Error(w, fmt.Sprintf("upload broke after %d bytes: %v", n, err), http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "%s received %d bytes\n", name, n)
	})
	// For trying timeouts and retries: /status/CODE answers CODE,
	// /delay/DURATION answers after DURATION (at most 30s), /flaky/PERCENT
	// answers 503 to PERCENT of requests at random.
	mux.HandleFunc("/status/{code}", func(w http.ResponseWriter, r *http.Request) {
		code, err := strconv.Atoi(r.PathValue("code"))
		if err != nil || code < 200 || code > 599 {
			http.Error(w, "give a status from 200 to 599: /status/503", http.StatusBadRequest)
			return
		}
		w.WriteHeader(code)
		fmt.Fprintf(w, "%d from %s\n", code, name)
	})
	mux.HandleFunc("/delay/{duration}", func(w http.ResponseWriter, r *http.Request) {
		d, err := time.ParseDuration(r.PathValue("duration"))
		if err != nil || d < 0 || d > 30*time.Second {
			http.Error(w, "give a duration up to 30s: /delay/500ms", http.StatusBadRequest)
			return
		}
		select {
		case <-time.After(d):
			fmt.Fprintf(w, "hello from %s after %s\n", name, d)
		case <-r.Context().Done():
		}
	})
	mux.HandleFunc("/flaky/{percent}", func(w http.ResponseWriter, r *http.Request) {
		p, err := strconv.Atoi(r.PathValue("percent"))
		if err != nil || p < 0 || p > 100 {
			http.Error(w, "give a percentage from 0 to 100: /flaky/30", http.StatusBadRequest)
			return
		}
		if rand.N(100) < p {
			http.Error(w, "flaky "+name+" failed this one", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintf(w, "hello from %s\n", name)
	})
	return mux
}
