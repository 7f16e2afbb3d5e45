package graphdb

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/trellis-mesh/trellis/examples/graphdb/graphpb"
)

// Client calls alpha over HTTP and gRPC, in plain text: in the mesh the
// client's sidecar adds mutual TLS. Safe for concurrent use.
type Client struct {
	HTTPBase string // e.g. http://demo-graph-alpha.db:8080
	http     *http.Client
	conn     *grpc.ClientConn
	graph    graphpb.GraphClient
}

// Dial prepares a client of the alpha at httpBase and grpcAddr. No
// connection is made until the first call.
func Dial(httpBase, grpcAddr string) (*Client, error) {
	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("grpc %s: %w", grpcAddr, err)
	}
	return &Client{HTTPBase: httpBase, http: &http.Client{}, conn: conn, graph: graphpb.NewGraphClient(conn)}, nil
}

// Close closes the gRPC connection.
func (c *Client) Close() error { return c.conn.Close() }

// Health calls GET /health.
func (c *Client) Health(ctx context.Context) (Health, error) {
	var h Health
	err := c.do(ctx, http.MethodGet, "/health", nil, &h)
	return h, err
}

// Query calls POST /query.
func (c *Client) Query(ctx context.Context, q Query) ([]Result, error) {
	body, _ := json.Marshal(q)
	var out struct {
		Data []Result `json:"data"`
	}
	err := c.do(ctx, http.MethodPost, "/query", body, &out)
	return out.Data, err
}

func (c *Client) do(ctx context.Context, method, path string, body []byte, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, c.HTTPBase+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, bytes.TrimSpace(data))
	}
	return json.Unmarshal(data, out)
}

// CheckVersion calls the gRPC CheckVersion.
func (c *Client) CheckVersion(ctx context.Context) (*graphpb.Version, error) {
	return c.graph.CheckVersion(ctx, &graphpb.CheckVersionRequest{})
}

// Load calls the gRPC Load.
func (c *Client) Load(ctx context.Context, req *graphpb.LoadRequest) (*graphpb.LoadResponse, error) {
	return c.graph.Load(ctx, req)
}

// Counts tallies calls by kind ("health", "check-version", "load",
// "query"): ok and failed, and the last error seen per kind.
type Counts struct {
	OK, Failed map[string]int
	LastError  map[string]string
}

func (c *Counts) note(kind string, err error) {
	if err == nil {
		c.OK[kind]++
		return
	}
	c.Failed[kind]++
	c.LastError[kind] = err.Error()
}

// Traffic loads the Star Wars dataset, then for duration makes rate
// rounds per second of: a health check, a CheckVersion, a query over
// HTTP and a small write over gRPC (which alpha forwards to zero as an
// Assign). Each call has timeout. It returns what succeeded and failed.
func (c *Client) Traffic(ctx context.Context, rate int, duration, timeout time.Duration) Counts {
	counts := Counts{OK: map[string]int{}, Failed: map[string]int{}, LastError: map[string]string{}}
	call := func(kind string, f func(context.Context) error) {
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		counts.note(kind, f(ctx))
	}
	call("load", func(ctx context.Context) error {
		if _, err := c.Load(ctx, StarWars()); status.Code(err) != codes.AlreadyExists {
			return err // loaded now, or failed; AlreadyExists: by an earlier run
		}
		return nil
	})
	tick := time.NewTicker(time.Second / time.Duration(max(rate, 1)))
	defer tick.Stop()
	end := time.Now().Add(duration)
	suffix := time.Now().UnixNano()
	queries := []Query{{Type: "Film"}, {Name: "A New Hope", Follow: "starring"}, {Name: "Yoda", Follow: "~starring"},
		{Name: "The Empire Strikes Back", Follow: "directed_by"}}
	for i := 0; time.Now().Before(end) && ctx.Err() == nil; i++ {
		call("health", func(ctx context.Context) error { _, err := c.Health(ctx); return err })
		call("check-version", func(ctx context.Context) error { _, err := c.CheckVersion(ctx); return err })
		call("query", func(ctx context.Context) error { _, err := c.Query(ctx, queries[i%len(queries)]); return err })
		call("load", func(ctx context.Context) error {
			_, err := c.Load(ctx, &graphpb.LoadRequest{
				Nodes: []*graphpb.Node{{Ref: "s", Type: "Screening", Name: fmt.Sprintf("screening-%d-%d", suffix, i)}},
				Edges: []*graphpb.Edge{{From: "s", Predicate: "shows", To: queries[1].Name}},
			})
			return err
		})
		select {
		case <-tick.C:
		case <-ctx.Done():
		}
	}
	return counts
}
