package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/status"

	"github.com/trellis-mesh/trellis/examples/graphdb"
)

// newGraphCmds are the demo's graph database and its client
// (examples/graphdb), as `trellis example graph-alpha|graph-zero|graph-client`.
func newGraphCmds(o *options) []*cobra.Command {
	var alpha graphdb.AlphaConfig
	alphaCmd := &cobra.Command{
		Use:   "graph-alpha",
		Short: "The demo graph database's data server (HTTP /health, /query; gRPC CheckVersion, Load)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			alpha.Instance = os.Getenv("POD_NAME")
			if alpha.Instance == "" { // a Kubernetes pod's host name is its name
				alpha.Instance, _ = os.Hostname()
			}
			fmt.Fprintf(o.out, "graph-alpha %s: HTTP %s, gRPC %s, zero %s\n", alpha.Instance, alpha.HTTPAddr, alpha.GRPCAddr, alpha.Zero)
			return graphdb.RunAlpha(ctx, alpha)
		},
	}
	alphaCmd.Flags().StringVar(&alpha.HTTPAddr, "http", ":8080", "HTTP listen address")
	alphaCmd.Flags().StringVar(&alpha.GRPCAddr, "grpc", ":9080", "gRPC listen address")
	alphaCmd.Flags().StringVar(&alpha.Zero, "zero", "demo-graph-zero.db.svc.cluster.local:5080", "the coordinator's gRPC address")

	var zeroAddr string
	zeroCmd := &cobra.Command{
		Use:   "graph-zero",
		Short: "The demo graph database's coordinator (gRPC Assign)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			fmt.Fprintf(o.out, "graph-zero: gRPC %s\n", zeroAddr)
			return graphdb.RunZero(ctx, zeroAddr)
		},
	}
	zeroCmd.Flags().StringVar(&zeroAddr, "listen", ":5080", "gRPC listen address")
	return []*cobra.Command{alphaCmd, zeroCmd, newGraphClientCmd(o)}
}

type graphClientOptions struct {
	*options
	http, grpc string
	timeout    time.Duration
}

// run dials alpha and calls f with a context bounded by the timeout.
func (g *graphClientOptions) run(ctx context.Context, f func(context.Context, *graphdb.Client) error) error {
	c, err := graphdb.Dial(g.http, g.grpc)
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, g.timeout)
	defer cancel()
	return f(ctx, c)
}

func newGraphClientCmd(o *options) *cobra.Command {
	g := &graphClientOptions{options: o}
	cmd := &cobra.Command{Use: "graph-client", Short: "Call the demo graph database"}
	cmd.PersistentFlags().StringVar(&g.http, "http", "http://demo-graph-alpha.db.svc.cluster.local:8080", "alpha's HTTP base URL")
	cmd.PersistentFlags().StringVar(&g.grpc, "grpc", "demo-graph-alpha.db.svc.cluster.local:9080", "alpha's gRPC address")
	cmd.PersistentFlags().DurationVar(&g.timeout, "timeout", 5*time.Second, "give up on a call after this long")

	health := &cobra.Command{Use: "health", Short: "GET /health", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.run(cmd.Context(), func(ctx context.Context, c *graphdb.Client) error {
				h, err := c.Health(ctx)
				if err != nil {
					return fmt.Errorf("GET %s/health: %w", g.http, err)
				}
				return json.NewEncoder(o.out).Encode(h)
			})
		}}
	version := &cobra.Command{Use: "check-version", Short: "gRPC CheckVersion", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.run(cmd.Context(), func(ctx context.Context, c *graphdb.Client) error {
				v, err := c.CheckVersion(ctx)
				if err != nil {
					return fmt.Errorf("CheckVersion at %s: %s: %s", g.grpc, status.Code(err), status.Convert(err).Message())
				}
				return json.NewEncoder(o.out).Encode(v)
			})
		}}
	var q graphdb.Query
	query := &cobra.Command{Use: "query", Short: "POST /query", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.run(cmd.Context(), func(ctx context.Context, c *graphdb.Client) error {
				res, err := c.Query(ctx, q)
				if err != nil {
					return err
				}
				return json.NewEncoder(o.out).Encode(res)
			})
		}}
	query.Flags().StringVar(&q.Type, "type", "", "nodes of this type (Film, Character, Director)")
	query.Flags().StringVar(&q.Name, "name", "", "the node of this name")
	query.Flags().StringVar(&q.Follow, "follow", "", "and its neighbours along this predicate (starring, directed_by; ~ for reverse)")

	var rate int
	var duration time.Duration
	traffic := &cobra.Command{Use: "traffic", Short: "Load the Star Wars dataset, then make health, CheckVersion, query and write calls",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if rate < 1 || rate > 1000 || duration <= 0 || duration > time.Hour {
				return fmt.Errorf("--rate must be 1..1000 and --duration up to 1h (got %d, %s)", rate, duration)
			}
			c, err := graphdb.Dial(g.http, g.grpc)
			if err != nil {
				return err
			}
			defer c.Close()
			counts := c.Traffic(cmd.Context(), rate, duration, g.timeout)
			if err := json.NewEncoder(o.out).Encode(counts); err != nil {
				return err
			}
			for kind, n := range counts.Failed {
				if n > 0 {
					return fmt.Errorf("%d %s calls failed, the last with: %s", n, kind, counts.LastError[kind])
				}
			}
			return nil
		}}
	traffic.Flags().IntVar(&rate, "rate", 10, "rounds per second (each round is four calls)")
	traffic.Flags().DurationVar(&duration, "duration", 10*time.Second, "how long to run")
	cmd.AddCommand(health, version, query, traffic)
	return cmd
}
