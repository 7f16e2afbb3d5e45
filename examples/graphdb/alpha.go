package graphdb

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/trellis-mesh/trellis/examples/graphdb/graphpb"
	"github.com/trellis-mesh/trellis/internal/safehttp"
)

// Release is the version every demo server reports.
const Release = "v0.1.0"

// AlphaConfig configures a data server. Zero fields take the defaults.
type AlphaConfig struct {
	HTTPAddr string // default :8080
	GRPCAddr string // default :9080
	// Zero is the coordinator's gRPC address. Default
	// demo-graph-zero.db.svc.cluster.local:5080.
	Zero string
	// Instance names this server in answers (the pod name).
	Instance string
}

// RunAlpha serves HTTP and gRPC until ctx is done, then stops both
// gracefully (5 s at most). It returns the first listener error.
func RunAlpha(ctx context.Context, cfg AlphaConfig) error {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&cfg.HTTPAddr, ":8080")
	def(&cfg.GRPCAddr, ":9080")
	def(&cfg.Zero, "demo-graph-zero.db.svc.cluster.local:5080")
	zc, err := grpc.NewClient(cfg.Zero, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("alpha: zero at %s: %w", cfg.Zero, err)
	}
	defer zc.Close()
	a := &alpha{cfg: cfg, store: newStore(), zero: graphpb.NewZeroClient(zc), started: time.Now()}

	httpLn, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("alpha: %w", err)
	}
	grpcLn, err := net.Listen("tcp", cfg.GRPCAddr)
	if err != nil {
		httpLn.Close()
		return fmt.Errorf("alpha: %w", err)
	}
	httpSrv := safehttp.Server(a.mux())
	grpcSrv := newGRPCServer()
	graphpb.RegisterGraphServer(grpcSrv, a)

	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := httpSrv.Serve(httpLn); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	g.Go(func() error { return grpcSrv.Serve(grpcLn) })
	g.Go(func() error {
		<-ctx.Done()
		stopGracefully(grpcSrv)
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return httpSrv.Shutdown(shutdown)
	})
	return g.Wait()
}

type alpha struct {
	graphpb.UnimplementedGraphServer
	cfg     AlphaConfig
	store   *store
	zero    graphpb.ZeroClient
	started time.Time
}

// Health is what GET /health answers.
type Health struct {
	Instance string `json:"instance"`
	Status   string `json:"status"`
	Version  string `json:"version"`
	Uptime   int64  `json:"uptime"` // seconds
	Nodes    int    `json:"nodes"`
	// Client is the caller's SPIFFE ID as this server's sidecar vouched
	// for it (x-forwarded-client-cert); empty for callers outside the mesh.
	Client string `json:"client,omitempty"`
}

// maxQueryBytes bounds a /query body.
const maxQueryBytes = 64 << 10

func (a *alpha) mux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, Health{Instance: a.cfg.Instance, Status: "healthy", Version: Release,
			Uptime: int64(time.Since(a.started).Seconds()), Nodes: a.store.size(),
			Client: ClientID(r.Header.Get(XFCCHeader))})
	})
	mux.HandleFunc("POST /query", func(w http.ResponseWriter, r *http.Request) {
		var q Query
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxQueryBytes))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&q); err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "bad query: " + err.Error() +
				`; send JSON such as {"type": "Film"} or {"name": "A New Hope", "follow": "starring"}`})
			return
		}
		res, err := a.store.query(q)
		if err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"data": res})
	})
	return mux
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func (a *alpha) CheckVersion(ctx context.Context, _ *graphpb.CheckVersionRequest) (*graphpb.Version, error) {
	var client string
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if v := md.Get(strings.ToLower(XFCCHeader)); len(v) > 0 {
			client = ClientID(v[0])
		}
	}
	return &graphpb.Version{Tag: Release, Instance: a.cfg.Instance, Client: client}, nil
}

// Load asks zero for IDs and a timestamp, then stores the nodes and edges.
func (a *alpha) Load(ctx context.Context, req *graphpb.LoadRequest) (*graphpb.LoadResponse, error) {
	if err := a.store.check(req); errors.Is(err, errExists) {
		return nil, status.Error(codes.AlreadyExists, err.Error())
	} else if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	lease, err := a.zero.Assign(forwardTrace(ctx), &graphpb.AssignRequest{Count: uint32(len(req.GetNodes()))})
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "coordinator: %v", status.Convert(err).Message())
	}
	uids, edges, err := a.store.add(req, lease.GetFirstUid())
	if err != nil {
		return nil, status.Error(codes.Aborted, err.Error())
	}
	return &graphpb.LoadResponse{Uids: uids, CommitTs: lease.GetCommitTs(), Edges: edges}, nil
}

// traceHeaders carry a trace from call to call. A sidecar starts or
// continues the trace of every request, but only the app knows which of
// its outgoing calls serve which incoming one: it copies these headers
// across, and the mesh stitches the spans into one trace.
var traceHeaders = []string{"traceparent", "tracestate", "x-request-id",
	"x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags", "b3"}

// forwardTrace copies the incoming call's trace headers to the calls made
// with the returned context.
func forwardTrace(ctx context.Context) context.Context {
	in, _ := metadata.FromIncomingContext(ctx)
	var kv []string
	for _, h := range traceHeaders {
		for _, v := range in.Get(h) {
			kv = append(kv, h, v)
		}
	}
	if len(kv) == 0 {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, kv...)
}

// XFCCHeader is where a sidecar tells the app who called, as Envoy's
// x-forwarded-client-cert: By=<server id>;URI=<client id>.
const XFCCHeader = "X-Forwarded-Client-Cert"

// ClientID returns the URI (the client's SPIFFE ID) of the last element
// of an x-forwarded-client-cert value, or "".
func ClientID(xfcc string) string {
	if i := strings.LastIndexByte(xfcc, ','); i >= 0 {
		xfcc = xfcc[i+1:]
	}
	for _, kv := range strings.Split(xfcc, ";") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(kv), "URI="); ok {
			return v
		}
	}
	return ""
}
