package proxy

// The inbound engine's gRPC relay against a real gRPC server: messages
// larger than every window (the relay waits for window on both sides),
// trailers-only answers, a caller that cancels, and the metrics the
// destination reports for each.

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
)

// rawCodec passes gRPC messages as the bytes they are.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return *v.(*[]byte), nil }
func (rawCodec) Unmarshal(data []byte, v any) error {
	*v.(*[]byte) = append([]byte(nil), data...)
	return nil
}
func (rawCodec) Name() string { return "raw" }

func TestInboundEngineGRPC(t *testing.T) {
	held, cancelled := make(chan struct{}, 1), make(chan struct{}, 1)
	srv := grpc.NewServer(grpc.ForceServerCodec(rawCodec{}), grpc.MaxRecvMsgSize(16<<20), grpc.MaxSendMsgSize(16<<20),
		grpc.UnknownServiceHandler(func(_ any, stream grpc.ServerStream) error {
			method, _ := grpc.MethodFromServerStream(stream)
			// Each reads its request first: an answer that came before
			// the message passed the proxy would be recorded without it.
			var m []byte
			switch method {
			case "/t.T/Deny": // trailers-only: a status before any message
				stream.RecvMsg(&m)
				return status.Error(codes.PermissionDenied, "not you")
			case "/t.T/Hold": // wait for the caller to give up
				stream.RecvMsg(&m)
				held <- struct{}{}
				<-stream.Context().Done()
				cancelled <- struct{}{}
				return stream.Context().Err()
			}
			for { // echo each message
				var m []byte
				if err := stream.RecvMsg(&m); err != nil {
					if errors.Is(err, io.EOF) {
						return nil
					}
					return err
				}
				if err := stream.SendMsg(&m); err != nil {
					return err
				}
			}
		}))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	in, cfg, addr := meshTLSTo(t, uint16(ln.Addr().(*net.TCPAddr).Port))
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)),
		grpc.WithDefaultCallOptions(grpc.ForceCodec(rawCodec{}), grpc.MaxCallRecvMsgSize(16<<20), grpc.MaxCallSendMsgSize(16<<20)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// 3 MiB each way, three times: over the 1 MiB stream windows.
	big := make([]byte, 3<<20)
	rand.Read(big)
	stream, err := conn.NewStream(ctx, &grpc.StreamDesc{ClientStreams: true, ServerStreams: true}, "/t.T/Echo")
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := stream.SendMsg(&big); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
		var got []byte
		if err := stream.RecvMsg(&got); err != nil || !bytes.Equal(got, big) {
			t.Fatalf("echo %d: %d bytes, %v", i, len(got), err)
		}
	}
	stream.CloseSend()
	var rest []byte
	if err := stream.RecvMsg(&rest); !errors.Is(err, io.EOF) {
		t.Fatalf("the end of the stream: %v, want io.EOF (status OK)", err)
	}

	small := []byte("ping")
	var out []byte
	if err := conn.Invoke(ctx, "/t.T/Deny", &small, &out); status.Code(err) != codes.PermissionDenied || status.Convert(err).Message() != "not you" {
		t.Errorf("trailers-only answer: %v, want PermissionDenied \"not you\"", err)
	}

	hctx, hcancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- conn.Invoke(hctx, "/t.T/Hold", &small, &out) }()
	<-held
	hcancel()
	if err := <-done; status.Code(err) != codes.Canceled {
		t.Errorf("cancelled call: %v", err)
	}
	select {
	case <-cancelled:
	case <-time.After(5 * time.Second):
		t.Error("the app's call was not cancelled with the caller's")
	}

	dest := []string{`reporter="destination"`, `request_protocol="grpc"`}
	for _, c := range []struct {
		metric string
		labels []string
		want   float64
	}{
		{"istio_requests_total", append(dest, `grpc_response_status="0"`), 1},
		{"istio_requests_total", append(dest, `grpc_response_status="7"`), 1},
		{"istio_requests_total", append(dest, `response_flags="DC"`), 1},
		{"istio_request_messages_total", dest, 5},  // 3 echoes, Deny's and Hold's
		{"istio_response_messages_total", dest, 3}, // the echoes
	} {
		if n := scrapeWait(t, in.Metrics, c.metric, c.labels, c.want); n != c.want {
			t.Errorf("%s%v = %v, want %v", c.metric, c.labels, n, c.want)
		}
	}
}
