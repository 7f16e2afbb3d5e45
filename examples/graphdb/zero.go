package graphdb

import (
	"context"
	"fmt"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/trellis-mesh/trellis/examples/graphdb/graphpb"
)

// RunZero serves the coordinator on addr (default :5080) until ctx is
// done.
func RunZero(ctx context.Context, addr string) error {
	if addr == "" {
		addr = ":5080"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("zero: %w", err)
	}
	srv := newGRPCServer()
	graphpb.RegisterZeroServer(srv, &zero{nextUID: 1})
	go func() {
		<-ctx.Done()
		stopGracefully(srv)
	}()
	return srv.Serve(ln)
}

// maxAssign bounds one lease, so a bad request cannot exhaust the IDs.
const maxAssign = 10000

type zero struct {
	graphpb.UnimplementedZeroServer
	mu       sync.Mutex
	nextUID  uint64 // guarded by mu
	commitTS uint64 // guarded by mu
}

func (z *zero) Assign(_ context.Context, req *graphpb.AssignRequest) (*graphpb.AssignResponse, error) {
	if req.GetCount() > maxAssign {
		return nil, status.Errorf(codes.InvalidArgument, "count %d is over %d; load in smaller batches", req.GetCount(), maxAssign)
	}
	z.mu.Lock()
	defer z.mu.Unlock()
	first := z.nextUID
	z.nextUID += uint64(req.GetCount())
	z.commitTS++
	return &graphpb.AssignResponse{FirstUid: first, CommitTs: z.commitTS}, nil
}

// newGRPCServer builds a demo server with explicit limits.
func newGRPCServer() *grpc.Server {
	return grpc.NewServer(grpc.MaxConcurrentStreams(100), grpc.ConnectionTimeout(10*time.Second),
		grpc.MaxRecvMsgSize(1<<20))
}

// stopGracefully lets calls in flight finish for up to 5 s.
func stopGracefully(s *grpc.Server) {
	done := make(chan struct{})
	go func() { s.GracefulStop(); close(done) }()
	t := time.NewTimer(5 * time.Second)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		s.Stop()
	}
}
