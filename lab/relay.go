//go:build linux

package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"
)

// Relay forwards every connection accepted on a unix socket to a TCP address, byte for byte, until
// ctx ends. The lab runs it in the control namespace when the server listens on one address only:
// the server serves the underlay (for agents) and the relay gives the root namespace's CLI the
// unix socket, without any link into the root namespace.
func Relay(ctx context.Context, socket, target string, log *slog.Logger) error {
	if err := os.Remove(socket); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("relay: remove stale socket %s: %w", socket, err)
	}
	ln, err := net.Listen("unix", socket)
	if err != nil {
		return fmt.Errorf("relay: listen on %s: %w", socket, err)
	}
	if err := os.Chmod(socket, 0o600); err != nil {
		ln.Close()
		return fmt.Errorf("relay: chmod %s: %w", socket, err)
	}
	log.Info("relay listening", "socket", socket, "target", target)
	var wg sync.WaitGroup
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	for {
		conn, err := ln.Accept()
		if err != nil {
			wg.Wait()
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("relay: accept on %s: %w", socket, err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			relayConn(ctx, conn, target, log)
		}()
	}
}

func relayConn(ctx context.Context, client net.Conn, target string, log *slog.Logger) {
	defer client.Close()
	d := net.Dialer{Timeout: 5 * time.Second}
	upstream, err := d.DialContext(ctx, "tcp", target)
	if err != nil {
		log.Warn("relay dial failed", "target", target, "err", err)
		return
	}
	defer upstream.Close()
	stop := context.AfterFunc(ctx, func() {
		client.Close()
		upstream.Close()
	})
	defer stop()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = io.Copy(upstream, client)
		_ = upstream.(*net.TCPConn).CloseWrite()
	}()
	_, _ = io.Copy(client, upstream)
	if uc, ok := client.(*net.UnixConn); ok {
		_ = uc.CloseWrite()
	}
	<-done
}
