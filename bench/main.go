// Command bench is a load generator for the chat server: real clients on
// real sockets, and numbers it can vouch for.
//
//	go run ./bench -url http://127.0.0.1:8080 -clients 1000 -senders 10 -rate 500 -duration 10s
//
// puts 1,000 WebSocket clients (-transport polling: long-poll clients) in one
// room, has 10 of them send 500 messages a second in total for 10 s, and
// reports deliveries, loss, duplicates, throughput, latency and CPU use,
// and how long a newcomer waits meanwhile for the health page and for a
// new WebSocket (probe.go).
//
//	go run ./bench -clients 10000 -rooms 1000 -senders 1000 -rate 10000 -duration 10s
//
// spreads the clients over 1,000 rooms of 10 (client n in room n mod 1,000,
// so sender i is in room i mod 1,000), and checks that each message reaches
// exactly the members of its room: the shape of most real chats.
//
//	go run ./bench -idle 10000 -server-pid PID
//
// opens 10,000 idle WebSockets instead, and reports how much resident memory
// the server spends on each.
//
// The server's default limits are for people: 20 events a second per
// session, 10,000 sessions. Start it with raised ones for a benchmark:
//
//	go run . -rate 100000 -burst 100000 -max-sessions 100000 -sessions-per-ip 100000
//
// Three things make the numbers honest:
//
//   - Open loop. Senders do not wait for their messages to come back: every
//     message has a time fixed in advance and carries it in its text
//     ("b <id> <unix ns> xxx…"). A slow server shows as latency, not as a
//     politely lower rate.
//   - Every delivery counted. Each message has a unique number and each
//     client remembers the numbers it has seen: loss and duplicates are exact.
//   - A generator that is not the bottleneck: it reports its own CPU use, and
//     the whole machine's, and reads messages without decoding each one.
//
// With -peer it measures another chat server the same way, for comparison:
// gorilla/websocket's chat example (-peer gorilla), the chat of Socket.IO's
// "Get started" guide on Node.js (-peer socketio), or Centrifugo, whose
// channels are rooms (-peer centrifugo, with -rooms too). bench/peer.sh
// builds and starts each. The first two broadcast every message to
// everyone; this server does more for each (a JSON envelope, a seq, an
// outbox kept for resuming).
//
// It only ever connects to loopback addresses, and every run is bounded in
// size and in time.
package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/signal"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// Bounds on one run.
const (
	maxClients  = 100_000   // clients, or idle connections
	maxRate     = 1_000_000 // messages a second, all senders together
	maxDuration = 10 * time.Minute
	overtime    = 3 * time.Minute // for connecting and closing: the hard deadline is -duration + -drain + -hold + this
	listenWait  = 5 * time.Minute // for the server to listen (a peer may be building)
)

// serverHint is printed when the server refused clients or messages.
const serverHint = "hint: the server refused clients or messages; for a large run start it with raised limits:\n" +
	"      -rate 100000 -burst 100000 -max-sessions 100000 -sessions-per-ip 100000"

type options struct {
	url, transport, room  string
	peer                  string // "chat" (this server), "gorilla", "socketio" or "centrifugo"
	clients, senders      int
	rooms                 int     // -room, or with -rooms N > 1 the rooms ROOM-0 … ROOM-(N-1)
	rate                  float64 // messages a second, all senders together
	size                  int     // characters in a message's text
	duration, drain, hold time.Duration
	idle, serverPID       int
	perSource             int           // connections per loopback source address
	probe                 time.Duration // how often the newcomer probe tries (probe.go); 0 for never
}

func parseFlags(args []string, out io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.StringVar(&o.url, "url", "http://127.0.0.1:8080", "the server: a loopback address only")
	fs.StringVar(&o.transport, "transport", "websocket", "websocket or polling")
	fs.StringVar(&o.room, "room", "general", "the room; any other than general is joined with join_room")
	fs.StringVar(&o.peer, "peer", "chat", "the server: chat (this one), or a peer that bench/peer.sh starts: gorilla (gorilla/websocket's chat example), socketio (Socket.IO's chat) or centrifugo")
	fs.IntVar(&o.clients, "clients", 100, "clients in the room")
	fs.IntVar(&o.rooms, "rooms", 1, "spread the clients over this many rooms, named after -room: general-0, general-1, … (client n in room n mod N)")
	fs.IntVar(&o.senders, "senders", 10, "how many of the clients send")
	fs.Float64Var(&o.rate, "rate", 100, "messages a second, all senders together")
	fs.IntVar(&o.size, "size", 60, "characters in a message's text")
	fs.DurationVar(&o.duration, "duration", 10*time.Second, "the send window")
	fs.DurationVar(&o.drain, "drain", 5*time.Second, "longest wait after the send window for the last deliveries")
	fs.IntVar(&o.idle, "idle", 0, "idle mode: open this many idle WebSockets and measure the server's memory")
	fs.IntVar(&o.serverPID, "server-pid", 0, "the server's process id, to report its CPU and memory (needed by -idle)")
	fs.DurationVar(&o.hold, "hold", 5*time.Second, "idle mode: how long the connections stay open")
	fs.IntVar(&o.perSource, "per-source", 20_000, "connections per source address 127.0.0.1, 127.0.0.2, …")
	fs.DurationVar(&o.probe, "probe", 500*time.Millisecond, "how often a newcomer probes the health page and a new WebSocket during the run; 0 for never")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	switch {
	case fs.NArg() > 0:
		return nil, fmt.Errorf("unexpected arguments: %q", fs.Args())
	case o.transport != "websocket" && o.transport != "polling":
		return nil, errors.New("-transport is websocket or polling")
	case !slices.Contains([]string{"chat", "gorilla", "socketio", "centrifugo"}, o.peer):
		return nil, errors.New("-peer is chat, gorilla, socketio or centrifugo")
	case o.peer != "chat" && o.transport != "websocket":
		return nil, errors.New("-peer takes WebSockets only")
	case (o.peer == "gorilla" || o.peer == "socketio") && (o.room != "general" || o.rooms > 1):
		return nil, errors.New("-peer gorilla and socketio have only one room: no -room or -rooms")
	case !regexp.MustCompile(`^[\pL\p{Nd}._-]{1,32}$`).MatchString(o.roomName(o.rooms - 1)): // the server's rule; safe in JSON as it is
		return nil, errors.New("-room is 1-32 letters, digits, '-', '_' or '.' (with -rooms, its number too)")
	case o.rooms < 1 || o.rooms > o.clients:
		return nil, errors.New("-rooms is between 1 and -clients")
	case o.clients < 1 || o.clients > maxClients || o.idle < 0 || o.idle > maxClients:
		return nil, fmt.Errorf("-clients and -idle are at most %d", maxClients)
	case o.senders < 1 || o.senders > o.clients:
		return nil, errors.New("-senders is between 1 and -clients")
	case !(o.rate > 0 && o.rate <= maxRate):
		return nil, fmt.Errorf("-rate is above 0 and at most %d", maxRate)
	case o.size < 1 || o.size > 2000:
		return nil, errors.New("-size is 1 to 2000 (the server's limit)")
	case min(o.duration, o.drain, o.hold) < 0 || o.duration == 0 || max(o.duration, o.drain, o.hold) > maxDuration:
		return nil, fmt.Errorf("-duration, -drain and -hold are at most %v", maxDuration)
	case o.probe != 0 && o.probe < 10*time.Millisecond:
		return nil, errors.New("-probe is 0 (never) or at least 10ms")
	case o.idle > 0 && o.serverPID <= 0:
		return nil, errors.New("-idle needs -server-pid")
	case o.perSource < 1:
		return nil, errors.New("-per-source must be positive")
	case float64(o.clients)*o.rate*o.duration.Seconds() > 32<<30: // the clients' bitsets, in bits
		return nil, errors.New("clients × messages is too large to count: make the run smaller")
	}
	return o, nil
}

// roomName is the name of room k: -room itself when there is one room.
func (o *options) roomName(k int) string {
	if o.rooms <= 1 {
		return o.room
	}
	return o.room + "-" + strconv.Itoa(k)
}

// run checks the target and the limits, then runs the load or the idle
// mode under one hard deadline.
func run(ctx context.Context, args []string, out io.Writer) error {
	o, err := parseFlags(args, out)
	if err != nil {
		return err
	}
	base, err := loopbackURL(ctx, o.url)
	if err != nil {
		return err
	}
	if o.idle > 0 {
		o.clients, o.senders, o.transport = o.idle, 0, "websocket"
	}
	var files syscall.Rlimit // Go raises the soft limit to the hard one at start
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &files); files.Cur < uint64(o.clients)+64 {
		return fmt.Errorf("%d connections need more open files than the limit, %d (ulimit -n)", o.clients, files.Cur)
	}
	if _, err := readRSS(o.serverPID); err != nil {
		return fmt.Errorf("-server-pid: %v", err)
	}
	if err := waitListening(ctx, base.Host, out); err != nil {
		return err
	}
	nw, err := newNetwork(base, o.clients, o.perSource)
	if err != nil {
		return err
	}
	defer nw.closeIdle()

	// Whatever happens, everything stops at the deadline (or an interrupt);
	// the watchdog makes sure of it even if closing a connection were to
	// hang. A run that returns calls it off.
	ctx, cancel := context.WithTimeout(ctx, o.duration+o.drain+o.hold+overtime)
	defer cancel()
	returned := make(chan struct{})
	defer close(returned) // deferred after cancel, so it runs first: the watchdog sees returned as soon as ctx ends
	go func() {
		<-ctx.Done()
		select {
		case <-returned:
		case <-time.After(10 * time.Second):
			fmt.Fprintln(os.Stderr, "bench: still running 10 s after the deadline; exiting")
			os.Exit(2)
		}
	}()
	r := newLoadRun(o, nw)
	if o.idle > 0 {
		return r.runIdle(ctx, out)
	}
	return r.runLoad(ctx, out)
}

// loopbackURL parses the server's URL and resolves its host, and refuses
// any host that is not only loopback addresses (127.0.0.0/8, ::1): a load
// generator must never be pointed at someone else's server. The URL it
// returns holds the address itself, so nothing is resolved again.
func loopbackURL(ctx context.Context, raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "ws") {
		return nil, fmt.Errorf("-url: want http://HOST:PORT, got %q", raw)
	}
	ips, err := net.DefaultResolver.LookupIPAddr(ctx, u.Hostname())
	if err != nil {
		return nil, fmt.Errorf("-url: %v", err)
	}
	for _, ip := range ips {
		if !ip.IP.IsLoopback() {
			return nil, fmt.Errorf("-url: %s is %s, not a loopback address: refusing to run", u.Hostname(), ip.IP)
		}
	}
	// IPv4 if there is one: it has more source addresses (client.go).
	ip := ips[max(0, slices.IndexFunc(ips, func(ip net.IPAddr) bool { return ip.IP.To4() != nil }))].IP
	return &url.URL{Scheme: "http", Host: net.JoinHostPort(ip.String(), cmp.Or(u.Port(), "80"))}, nil
}

// waitListening waits, at most listenWait, for the server to accept
// connections: a server started just before the generator (bench/peer.sh
// building a peer on first use, Node.js starting) may not listen yet.
// It says so once if it has to wait, so that a wrong -url shows.
func waitListening(ctx context.Context, addr string, out io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, listenWait)
	defer cancel()
	var d net.Dialer
	for waited := false; ; waited = true {
		conn, err := d.DialContext(ctx, "tcp", addr)
		if err == nil {
			return conn.Close()
		}
		if !waited {
			fmt.Fprintf(out, "waiting         for %s to listen (at most %v)\n", addr, listenWait)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("-url: nothing listens on %s: %v", addr, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// runLoad connects the clients, runs the send window and the drain, closes
// the clients and prints the report.
func (r *loadRun) runLoad(ctx context.Context, out io.Writer) error {
	o := r.o
	where := "room " + o.room
	if o.rooms > 1 {
		where = fmt.Sprintf("%d rooms %s … %s", o.rooms, o.roomName(0), o.roomName(o.rooms-1))
	}
	fmt.Fprintf(out, "bench: %s over %s, %d clients in %s, %d senders, %g messages/s in total for %v, %d-character texts\n",
		o.peer, o.transport, o.clients, where, o.senders, o.rate, o.duration, o.size)
	receivers := r.connect(ctx, out)
	defer r.closeAll()
	if len(receivers) < o.senders {
		r.closeAll()
		printCloses(out, r)
		return fmt.Errorf("only %d clients joined the room, fewer than -senders", len(receivers))
	}

	// The send window, then the drain: wait until every expected delivery
	// has arrived, or a second passes without one, or -drain is over.
	members := make([]int64, o.rooms) // the joined clients of each room
	for _, c := range receivers {
		members[c.room]++
	}
	senders := receivers[:o.senders]
	r.senders.Store(&senders)
	before := measure(o.serverPID)
	start := time.Now().Add(50 * time.Millisecond) // so that every sender starts on time
	var sending sync.WaitGroup
	for i, c := range senders {
		sending.Go(func() { r.sendLoop(ctx, c, i, start) })
	}
	newcomers := newProbe(r, o.probe) // through the send window and the drain
	probing, stopProbe := context.WithCancel(ctx)
	probed := make(chan struct{})
	go func() { newcomers.run(probing); close(probed) }()
	sending.Wait()
	windowEnd, inWindow := time.Now(), r.delivered.Load()
	// Every message accepted reaches every member of its sender's room.
	accepted := func() []int64 {
		perRoom := make([]int64, o.rooms)
		for _, s := range senders {
			perRoom[s.room] += s.sent.Load() - s.refused.Load()
		}
		return perRoom
	}
	expected := func() (n int64) {
		for k, a := range accepted() {
			n += a * members[k]
		}
		return n
	}
	deadline, last, still := windowEnd.Add(o.drain), r.delivered.Load(), 0
	for last < expected() && still < 10 && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(100 * time.Millisecond)
		if now := r.delivered.Load(); now != last {
			last, still = now, 0
		} else {
			still++
		}
	}
	after := measure(o.serverPID)
	stopProbe()
	<-probed
	r.closeAll() // the clients' counters may be read once they have stopped

	var received, dups, strays int64
	lossy, perRoom := 0, accepted()
	for _, c := range receivers {
		received, dups, strays = received+c.received, dups+c.dups, strays+c.strays
		if c.received < perRoom[c.room] {
			lossy++
		}
	}
	want := expected()
	fmt.Fprintf(out, "sent            %d messages (%d refused by the server, %d not sent); senders were at most %v late\n",
		r.sent.Load(), r.refused.Load(), r.sendErrors.Load(), time.Duration(r.lag.Load()).Round(time.Microsecond))
	if o.rooms > 1 {
		fmt.Fprintf(out, "deliveries      expected %d (each accepted message × its room's members: %d clients in %d rooms), received %d\n",
			want, len(receivers), o.rooms, received)
	} else {
		fmt.Fprintf(out, "deliveries      expected %d (accepted × %d receivers), received %d\n", want, len(receivers), received)
	}
	fmt.Fprintf(out, "loss            %d (%.3f%%, %d clients missed some), duplicates %d, from another room %d\n",
		want-received, 100*float64(want-received)/float64(max(want, 1)), lossy, dups, strays)
	if span := time.Unix(0, r.lastDelivery.Load()).Sub(start).Seconds(); span > 0 {
		fmt.Fprintf(out, "throughput      %.0f deliveries/s from the first send to the last delivery (%.2fs); "+
			"%.0f/s in the send window; target %.0f/s\n", float64(received)/span, span,
			float64(inWindow)/windowEnd.Sub(start).Seconds(), o.rate*float64(len(receivers))/float64(o.rooms))
		fmt.Fprintf(out, "batching        %.1f messages per server write (WebSocket message or poll answer)\n",
			float64(r.delivered.Load())/float64(max(r.batches.Load(), 1)))
	}
	fmt.Fprintf(out, "latency         %s\n", r.latency.summary())
	newcomers.report(out)
	fmt.Fprintf(out, "CPU             %s\n", after.since(before))
	printCloses(out, r)
	return nil
}

// runIdle opens -idle WebSockets that only answer pings, and reports how
// much the server's resident memory grew for each.
func (r *loadRun) runIdle(ctx context.Context, out io.Writer) error {
	before, err := settledRSS(ctx, r.o.serverPID)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "bench: %d idle WebSockets; server resident memory before: %.1f MiB\n", r.o.idle, mib(before))
	open := len(r.connect(ctx, out))
	defer r.closeAll()
	after, err := settledRSS(ctx, r.o.serverPID)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "server memory   %.1f MiB after: %.1f MiB more, %.1f KiB per connection\n",
		mib(after), mib(after-before), float64(after-before)/float64(max(open, 1))/1024)
	select {
	case <-time.After(r.o.hold):
	case <-ctx.Done():
	}
	r.closeAll()
	fmt.Fprintf(out, "held            %v\n", r.o.hold)
	printCloses(out, r)
	return nil
}

// printCloses reports the clients that the server closed or refused (by
// close code or HTTP status, and reason) or that failed, and what the
// server refused.
func printCloses(out io.Writer, r *loadRun) {
	why, closed := map[string]int{}, 0
	for _, c := range r.clients {
		if c.closedBy != "" {
			why[c.closedBy]++
			closed++
		}
	}
	fmt.Fprintf(out, "lost clients    %d, by why: %v\n", closed, why)
	if len(r.refusals) > 0 {
		fmt.Fprintf(out, "refused         %v\n", r.refusals)
		if r.o.peer == "chat" {
			fmt.Fprintln(out, serverHint)
		}
	}
}

// ---------------------------------------------------------------------------
// CPU and memory, from the kernel
// ---------------------------------------------------------------------------

// usage is a reading of the CPU time used so far: by this process, by the
// server, and by the whole machine, so that other load shows.
type usage struct {
	at                 time.Time
	self, server, idle time.Duration
	cpus               int
}

// tick is the unit of /proc's CPU times: USER_HZ, 100 on Linux.
const tick = 10 * time.Millisecond

func measure(serverPID int) usage {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	u := usage{at: time.Now(), self: time.Duration(ru.Utime.Nano() + ru.Stime.Nano())}
	// /proc/PID/stat: after the command name in parentheses, field 14 is
	// utime and 15 stime.
	if b, err := os.ReadFile("/proc/" + strconv.Itoa(serverPID) + "/stat"); serverPID > 0 && err == nil {
		if f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:])); len(f) > 12 {
			u.server = (atoi(f[11]) + atoi(f[12])) * tick
		}
	}
	// /proc/stat: "cpu user nice system idle iowait …" for all the CPUs
	// together, then a line for each. Idle time is measured, not sampled.
	if b, err := os.ReadFile("/proc/stat"); err == nil {
		u.cpus = strings.Count(string(b), "\ncpu")
		if f := strings.Fields(strings.SplitN(string(b), "\n", 2)[0]); len(f) > 5 {
			u.idle = (atoi(f[4]) + atoi(f[5])) * tick
		}
	}
	return u
}

func atoi(s string) time.Duration {
	n, _ := strconv.ParseInt(s, 10, 64)
	return time.Duration(n)
}

// since describes the CPU used between two readings, in % of one core.
// The kernel's network work is charged to the process it runs for; what
// is left of the machine's use is someone else's, and should be near 0.
func (u usage) since(old usage) string {
	pct := func(d time.Duration) float64 { return 100 * d.Seconds() / u.at.Sub(old.at).Seconds() }
	s := fmt.Sprintf("generator %.0f%% (GOMAXPROCS %d)", pct(u.self-old.self), runtime.GOMAXPROCS(0))
	if u.server > 0 {
		s += fmt.Sprintf(", server %.0f%%", pct(u.server-old.server))
	}
	wall := u.at.Sub(old.at)
	others := wall*time.Duration(u.cpus) - (u.idle - old.idle) - (u.self - old.self) - (u.server - old.server)
	return s + fmt.Sprintf(", everything else %.0f%% (%% of one core, %d cores, over %.1fs of sending and draining)",
		pct(others), u.cpus, u.at.Sub(old.at).Seconds())
}

// readRSS returns process pid's resident memory in bytes, VmRSS in
// /proc/PID/status; 0 without a pid.
func readRSS(pid int) (int64, error) {
	if pid <= 0 {
		return 0, nil
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	_, rest, _ := strings.Cut(string(b), "VmRSS:")
	kb, _, _ := strings.Cut(strings.TrimSpace(rest), " ")
	n, err := strconv.ParseInt(kb, 10, 64)
	return n << 10, err
}

// settledRSS reads the resident memory until it stops moving (two readings
// half a second apart within 1 %), for at most 10 s.
func settledRSS(ctx context.Context, pid int) (int64, error) {
	prev, err := readRSS(pid)
	for i := 0; i < 20 && err == nil && ctx.Err() == nil; i++ {
		time.Sleep(500 * time.Millisecond)
		now, err := readRSS(pid)
		if err != nil || max(now-prev, prev-now) < prev/100 {
			return now, err
		}
		prev = now
	}
	return prev, err
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }
