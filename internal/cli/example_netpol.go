package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"
)

// newPortsServerCmd serves TCP and UDP on the given ports: the server of the
// network-policy examples and conformance tests. TCP connections get the
// pod's name and are closed; UDP datagrams are answered with it.
func newPortsServerCmd(o *options) *cobra.Command {
	var ports []int
	cmd := &cobra.Command{
		Use:   "ports-server",
		Short: "Answer on TCP and UDP ports with the pod's name",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return servePorts(ctx, o, ports)
		},
	}
	cmd.Flags().IntSliceVar(&ports, "port", []int{80, 81}, "ports to serve on TCP and UDP")
	return cmd
}

func servePorts(ctx context.Context, o *options, ports []int) error {
	name := os.Getenv("POD_NAME")
	var closers []io.Closer
	defer func() {
		for _, c := range closers {
			c.Close()
		}
	}()
	for _, p := range ports {
		ln, err := net.Listen("tcp", fmt.Sprintf(":%d", p))
		if err != nil {
			return err
		}
		pc, err := net.ListenPacket("udp", fmt.Sprintf(":%d", p))
		if err != nil {
			ln.Close()
			return err
		}
		closers = append(closers, ln, pc)
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				_ = c.SetWriteDeadline(time.Now().Add(time.Second))
				io.WriteString(c, name)
				c.Close()
			}
		}()
		go func() {
			buf := make([]byte, 1500)
			for {
				_, addr, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				_, _ = pc.WriteTo([]byte(name), addr)
			}
		}()
	}
	fmt.Fprintf(o.out, "ports-server %s on TCP and UDP %v\n", name, ports)
	<-ctx.Done()
	return nil
}

// newProbeCmd probes targets ("tcp/HOST:PORT" or "udp/HOST:PORT")
// concurrently and prints one line per target: "TARGET ok" or "TARGET fail".
// With --for it keeps probing every --interval and prints totals instead.
func newProbeCmd(o *options) *cobra.Command {
	var timeout, forDur, interval time.Duration
	cmd := &cobra.Command{
		Use:   "probe TARGET...",
		Short: "Check which TCP/UDP targets answer",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, targets []string) error {
			for _, t := range targets {
				if !strings.HasPrefix(t, "tcp/") && !strings.HasPrefix(t, "udp/") {
					return fmt.Errorf("target %q: write tcp/HOST:PORT or udp/HOST:PORT", t)
				}
			}
			if forDur > 0 {
				return probeRepeatedly(o, targets, timeout, forDur, interval)
			}
			results := make([]bool, len(targets))
			var wg sync.WaitGroup
			for i, t := range targets {
				wg.Add(1)
				go func() { defer wg.Done(); results[i] = probeOnce(t, timeout) == nil }()
			}
			wg.Wait()
			for i, t := range targets {
				fmt.Fprintln(o.out, t, map[bool]string{true: "ok", false: "fail"}[results[i]])
			}
			return nil
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", time.Second, "how long to wait for an answer")
	cmd.Flags().DurationVar(&forDur, "for", 0, "keep probing this long and print totals")
	cmd.Flags().DurationVar(&interval, "interval", 20*time.Millisecond, "pause between rounds with --for")
	return cmd
}

// probeRepeatedly probes every target each interval until the duration is
// over, then prints "TARGET ok=N fail=M" lines.
func probeRepeatedly(o *options, targets []string, timeout, total, interval time.Duration) error {
	ok := make([]int, len(targets))
	fail := make([]int, len(targets))
	deadline := time.Now().Add(total)
	for time.Now().Before(deadline) {
		for i, t := range targets {
			if probeOnce(t, timeout) == nil {
				ok[i]++
			} else {
				fail[i]++
			}
		}
		time.Sleep(interval)
	}
	for i, t := range targets {
		fmt.Fprintf(o.out, "%s ok=%d fail=%d\n", t, ok[i], fail[i])
	}
	return nil
}

// probeOnce succeeds when a TCP connection opens and the server speaks, or
// a UDP datagram is answered, within timeout.
func probeOnce(target string, timeout time.Duration) error {
	network, addr, _ := strings.Cut(target, "/")
	c, err := net.DialTimeout(network, addr, timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	if network == "udp" {
		if _, err := c.Write([]byte("probe")); err != nil {
			return err
		}
	}
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	if n == 0 {
		return errors.Join(errors.New("no answer"), err)
	}
	return nil
}
