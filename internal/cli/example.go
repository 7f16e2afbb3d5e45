package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
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
	srv := safehttp.Server(mux)
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
