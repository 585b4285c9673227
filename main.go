// Command chat is a small real-time chat server: WebSockets, with
// long-polling as the fallback, sessions that survive a dropped connection,
// rooms, private messages and typing indicators. PROTOCOL.md is its wire
// contract; README.md says how to run it, and server.go is where the story
// of the code begins.
//
// This file teaches the part every Go server has: flags (PROTOCOL.md
// section 8), an http.Server whose timeouts bound what a slow or silent
// client can hold, and a graceful shutdown, which for a real-time server
// means more than http.Server.Shutdown: it must close the WebSockets it no
// longer sees (they were hijacked) and answer the long-polls it holds.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"path"
	"runtime/pprof"
	"strings"
	"sync"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "chat:", err)
		os.Exit(1)
	}
}

// shutdownWait bounds a shutdown: PROTOCOL.md promises an exit within 5 s,
// and this leaves a second for everything after the connections close.
const shutdownWait = 4 * time.Second

// answerWait is how long the answer to a long-poll GET has to be written,
// once the GET has been held -poll-timeout (the server's WriteTimeout).
const answerWait = 10 * time.Second

// run parses the flags, serves until ctx is done, then shuts down: every
// WebSocket is closed with 1001 and every waiting long-poll answered.
func run(ctx context.Context, args []string, stdout io.Writer) error {
	cfg := defaultConfig()
	addr := ":8080"
	if port := os.Getenv("PORT"); port != "" {
		addr = ":" + port
	}
	fs := flag.NewFlagSet("chat", flag.ContinueOnError)
	fs.SetOutput(stdout)
	fs.StringVar(&addr, "addr", addr, "listen address (:$PORT when PORT is set)")
	fs.DurationVar(&cfg.Grace, "grace", cfg.Grace, "how long a session outlives its transport")
	fs.DurationVar(&cfg.PollTimeout, "poll-timeout", cfg.PollTimeout, "how long a long-poll GET waits")
	fs.IntVar(&cfg.History, "history", cfg.History, "messages kept per room")
	fs.Float64Var(&cfg.Rate, "rate", cfg.Rate, "events per second per session")
	fs.IntVar(&cfg.Burst, "burst", cfg.Burst, "burst of events per session")
	fs.IntVar(&cfg.MaxSessions, "max-sessions", cfg.MaxSessions, "live sessions")
	fs.IntVar(&cfg.SessionsPerIP, "sessions-per-ip", cfg.SessionsPerIP, "live sessions one client address may hold (IPv6 by /64)")
	fs.IntVar(&cfg.Outbox, "outbox", cfg.Outbox, "events kept per session")
	fs.IntVar(&cfg.PresenceLimit, "presence-limit", cfg.PresenceLimit, "members above which a room stops announcing presence")
	origins := fs.String("origins", "", "extra origins allowed to open WebSockets and POST, comma-separated host patterns")
	trustProxy := fs.String("trust-proxy", "", "reverse proxies whose X-Forwarded-For is believed: comma-separated addresses or CIDR ranges")
	dataDir := fs.String("data", "", "keep room history in this directory across restarts (none: in memory only)")
	tlsCert := fs.String("tls-cert", "", "serve https and wss with this certificate file (PEM), with -tls-key")
	tlsKey := fs.String("tls-key", "", "the private key file (PEM) of -tls-cert")
	fs.BoolVar(&cfg.Metrics, "metrics", false, "serve GET /metrics in the Prometheus text format")
	verbose := fs.Bool("v", false, "log every session's end and every long-poll wait")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile to this file until shutdown (for go tool pprof)")
	if err := fs.Parse(args); errors.Is(err, flag.ErrHelp) {
		return nil // -h: the usage is printed, nothing else to do
	} else if err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	if (*tlsCert == "") != (*tlsKey == "") {
		return errors.New("-tls-cert and -tls-key go together")
	}
	if cfg.Outbox < 1 || cfg.Burst < 1 || !(cfg.Rate > 0 && cfg.Rate < math.Inf(1)) || cfg.MaxSessions < 1 || cfg.SessionsPerIP < 1 || cfg.Grace <= 0 || cfg.PollTimeout <= 0 ||
		cfg.History < 0 || cfg.PresenceLimit < 0 {
		return errors.New("-outbox, -burst, -rate, -max-sessions, -sessions-per-ip, -grace and -poll-timeout must be positive (and -rate a number); -history and -presence-limit not negative")
	}
	for o := range strings.SplitSeq(*origins, ",") {
		if o = strings.TrimSpace(o); o == "" {
			continue
		}
		if _, err := path.Match(o, ""); err != nil { // a pattern that could never match
			return fmt.Errorf("-origins: %q is not a pattern (path.Match syntax): %v", o, err)
		}
		cfg.Origins = append(cfg.Origins, o)
	}
	for p := range strings.SplitSeq(*trustProxy, ",") {
		if p = strings.TrimSpace(p); p == "" {
			continue
		}
		prefix, err := netip.ParsePrefix(p)
		if addr, aerr := netip.ParseAddr(p); aerr == nil {
			prefix, err = addr.Unmap().Prefix(addr.Unmap().BitLen())
		}
		if err != nil {
			return fmt.Errorf("-trust-proxy: %q is neither an address nor a CIDR range", p)
		}
		cfg.TrustProxy = append(cfg.TrustProxy, prefix.Masked())
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	cfg.Logger = slog.New(slog.NewTextHandler(stdout, &slog.HandlerOptions{Level: level}))
	log := cfg.Logger

	srv := newServer(cfg)
	if *dataDir != "" {
		if err := srv.keepHistory(*dataDir); err != nil {
			return err
		}
		defer srv.journal.close()
		log.Info("room history kept", "dir", *dataDir)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	var fresh freshConns
	hs := &http.Server{
		Handler:           srv,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		// A long-poll GET is held for cfg.PollTimeout before it is answered:
		// the write timeout must outlast it.
		WriteTimeout:   cfg.PollTimeout + answerWait,
		IdleTimeout:    2 * time.Minute,
		MaxHeaderBytes: maxHeaderBytes,
		ErrorLog:       slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		ConnContext:    limitSendBuffer,
		ConnState:      fresh.track,
	}
	scheme := "http"
	if *tlsCert != "" {
		// https and wss; net/http speaks HTTP/2 to browsers that offer it
		// (pages and long-polls), and HTTP/1.1 for WebSocket upgrades.
		cert, err := tls.LoadX509KeyPair(*tlsCert, *tlsKey)
		if err != nil {
			return err
		}
		hs.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
		scheme = "https"
	}
	log.Info("chat server listening", "addr", ln.Addr().String(), "url", scheme+"://"+displayAddr(ln.Addr()))

	served := make(chan error, 1)
	go func() {
		if hs.TLSConfig != nil {
			served <- hs.ServeTLS(ln, "", "")
		} else {
			served <- hs.Serve(ln)
		}
	}()
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}

	log.Info("shutting down")
	shutdownCtx, cancel := context.WithTimeout(context.Background(), shutdownWait)
	defer cancel()
	// http.Server.Shutdown does not touch hijacked connections (the
	// WebSockets) and waits for the long-polls: srv.close ends both.
	closed := make(chan struct{})
	go func() { srv.close(shutdownCtx); close(closed) }()
	shut := make(chan error, 1)
	go func() { shut <- hs.Shutdown(shutdownCtx) }()
	fresh.closeAll() // Shutdown would wait 5 s for them
	err = <-shut
	if errors.Is(err, context.DeadlineExceeded) {
		log.Warn("shutdown: cutting off the connections still open")
		err = hs.Close()
	}
	<-closed
	<-served // http.ErrServerClosed
	if srv.journal != nil {
		err = errors.Join(err, srv.journal.close()) // what is queued is written first
	}
	return err
}

// maxHeaderBytes bounds a request's header (net/http's default is 1 MB): a
// client that sends headers and never finishes holds this much at most.
// The chat's requests carry a few hundred bytes.
const maxHeaderBytes = 16 << 10

// sendBuffer bounds each connection's kernel send buffer, in bytes: what a
// client that never reads can make the server hold in the kernel. Linux
// would otherwise let it grow to 4 MB. (It doubles the figure for its own
// bookkeeping.)
const sendBuffer = 64 << 10

// limitSendBuffer sets sendBuffer on each connection as it is accepted.
func limitSendBuffer(ctx context.Context, c net.Conn) context.Context {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetWriteBuffer(sendBuffer)
	}
	return ctx
}

// freshConns are the connections that have not sent a request yet: a
// browser opens some ahead of time, in case it needs them. Shutdown waits
// 5 s for such a connection to send its request before it counts it as
// idle; they have nothing to lose, so closeAll closes them at once.
type freshConns struct {
	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

// track is the http.Server's ConnState hook.
func (f *freshConns) track(c net.Conn, state http.ConnState) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if state == http.StateNew {
		if f.conns == nil {
			f.conns = make(map[net.Conn]struct{})
		}
		f.conns[c] = struct{}{}
	} else {
		delete(f.conns, c)
	}
}

// closeAll closes every connection that has not sent a request yet.
func (f *freshConns) closeAll() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for c := range f.conns {
		c.Close()
	}
}

// displayAddr turns a listening address into one a browser can open:
// localhost for an unspecified host.
func displayAddr(a net.Addr) string {
	host, port, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		host = "localhost"
	}
	return net.JoinHostPort(host, port)
}
