// The chat itself: rooms, the events of PROTOCOL.md, and the WebSocket
// transport that carries them. (pages.go, the plain HTTP part, comes before
// it in the story; session.go and poll.go after.)
//
// Read it from the top:
//
//  1. The server: one mutex over the chat state, and how it shuts down.
//  2. Rooms live in one mutex-guarded map. A broadcast encodes its event once
//     and appends it to each member's outbox (session.go), never waiting on
//     a network.
//  3. The events themselves: decoding, acks, one small function each.
//  4. The rules of PROTOCOL.md section 7: names, rooms, text.
//  5. The WebSocket transport: a reader, a writer that runs only while there
//     is something to send, and a close code that says why.
//
// session.go says what a session is: one user's presence, which outlives its
// connection, and the outbox of numbered events that a transport (the
// WebSocket here, a long-poll in poll.go) drains.
package main

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/url"
	"path"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/coder/websocket"
)

// ---------------------------------------------------------------------------
// 1. The server
// ---------------------------------------------------------------------------

// config holds every knob of the server. main fills it from flags
// (PROTOCOL.md section 8); tests shrink the timeouts instead of sleeping
// through them.
type config struct {
	Grace         time.Duration // how long a session outlives its transport (30 s)
	PollTimeout   time.Duration // how long a long-poll GET waits for an event (25 s)
	History       int           // messages kept per room (100)
	Rate          float64       // events per second per session (20)
	Burst         int           // the rate limiter's bucket size (40)
	MaxSessions   int           // live sessions (10,000)
	Outbox        int           // events kept per session for resuming (256)
	PresenceLimit int           // members above which a room is a crowd (200)
	Origins       []string      // extra origins allowed, as host patterns
	TypingTimeout time.Duration // typing turns itself off after this (5 s)
	PingEvery     time.Duration // how often the server pings a WebSocket (30 s)
	PongWait      time.Duration // how long a ping waits for its pong (10 s)
	MaxIdleRooms  int           // rooms kept with history but no members (1,000)
	Logger        *slog.Logger
}

// defaultConfig returns the defaults of PROTOCOL.md section 8.
func defaultConfig() config {
	return config{
		Grace:         30 * time.Second,
		PollTimeout:   25 * time.Second,
		History:       100,
		Rate:          20,
		Burst:         40,
		MaxSessions:   10000,
		Outbox:        256,
		PresenceLimit: 200,
		TypingTimeout: 5 * time.Second,
		PingEvery:     30 * time.Second,
		PongWait:      10 * time.Second,
		MaxIdleRooms:  1000,
		Logger:        slog.Default(),
	}
}

// Limits of PROTOCOL.md section 7 that have no flag.
const (
	maxUsername     = 24       // characters
	maxRoomName     = 32       // characters
	maxText         = 2000     // characters
	maxRooms        = 20       // rooms per session
	maxFrame        = 16 << 10 // bytes in one client WebSocket message
	rememberedAcks  = 256      // ack numbers a session answers again
	defaultRoomName = "general"
)

// writeWait bounds one write to a WebSocket: a client that takes longer to
// take in one batch of events is dropped.
const writeWait = 10 * time.Second

// writeBudget is how many WebSocket writes a second the server allows
// itself. Each write is a system call, and on one core about 100,000 of them
// a second is all there is: past that, more busy connections mean slower
// ones. So a connection that has just written waits writers/writeBudget
// before its next write (17 ms while 1,000 connections have events to send,
// 1.7 ms with 100), and that write carries every event of the wait. A
// connection that has not written for that long writes at once. Only busy
// connections count: an idle one has no writer running. See wsConn.pace.
// (Measured with bench/, README, Performance: at 1,000 clients and 500,000
// deliveries a second, p99 went from 324 ms to 44-64 ms and the server from
// 98% of a core to about 80%.)
const writeBudget = 60000

// server is the chat: an http.Handler holding every session and room.
// newServer builds it; close ends it.
type server struct {
	cfg config
	log *slog.Logger
	mux *http.ServeMux

	// ctx is the lifetime of every WebSocket connection (not r.Context(),
	// which net/http cancels in ways that have nothing to do with us).
	// close cancels it with a closeReason: "going away".
	ctx     context.Context
	cancel  context.CancelCauseFunc
	conns   sync.WaitGroup // WebSocket connections (serveConn) and waiting long-polls
	writers atomic.Int64   // WebSocket writers running, for wsConn.pace

	// mu guards the whole chat state: the maps below and every session's
	// name, rooms, typing timers, ack answers, rate bucket and grace timer.
	// Nothing waits while holding it: a broadcast only appends to outboxes.
	mu       sync.Mutex
	sessions map[string]*session // by sid
	names    map[string]*session // by lowercase username
	rooms    map[string]*room    // by name; kept while they have history
	idle     map[*room]struct{}  // rooms kept only for their history
	nextID   int64               // the last message id given out
	formRate map[string]*bucket  // POST /send_message rate, by client IP
	dropping []*session          // fell behind; ended by unlock
	closed   bool
}

// newServer builds the server and its routes. A test is
// httptest.NewServer(newServer(cfg)).
func newServer(cfg config) *server {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	srv := &server{
		cfg:      cfg,
		log:      cfg.Logger,
		mux:      http.NewServeMux(),
		sessions: make(map[string]*session),
		names:    make(map[string]*session),
		rooms:    make(map[string]*room),
		idle:     make(map[*room]struct{}),
		formRate: make(map[string]*bucket),
	}
	// Message ids start from the clock (microseconds, well within what a
	// JavaScript number holds exactly), so that they keep growing across a
	// restart: a client that rejoins with `since` from before it misses
	// nothing.
	srv.nextID = time.Now().UnixMicro()
	srv.ctx, srv.cancel = context.WithCancelCause(context.Background())

	srv.mux.HandleFunc("GET /ws", srv.serveWebSocket)
	srv.mux.HandleFunc("POST /poll", srv.servePollSend)
	srv.mux.HandleFunc("GET /poll", srv.servePollReceive)
	srv.mux.HandleFunc("GET /{$}", srv.servePage)
	srv.mux.HandleFunc("GET /about", srv.serveAbout)
	srv.mux.HandleFunc("POST /send_message", srv.serveSendForm)
	srv.mux.HandleFunc("GET /messages", srv.serveMessages)
	srv.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("ok\n"))
	})
	return srv
}

func (srv *server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	srv.mux.ServeHTTP(w, r)
}

// unlock releases mu, first ending the sessions that fell behind while it
// was held (session.push explains why not at once). Every critical section
// that may push an event ends with unlock rather than mu.Unlock.
func (srv *server) unlock() {
	for len(srv.dropping) > 0 {
		s := srv.dropping[0]
		srv.dropping = srv.dropping[1:]
		srv.endSession(s, "too slow") // may make others fall behind too
	}
	srv.mu.Unlock()
}

// track counts one more connection that close must wait for. It reports
// false once the server is closing.
func (srv *server) track() bool {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if srv.closed {
		return false
	}
	srv.conns.Add(1)
	return true
}

// close ends the server: every WebSocket is closed with 1001 (going away),
// every waiting long-poll answers at once, and every timer stops. It waits
// for the connections until ctx is done (then one goroutine stays behind,
// waiting for the stragglers: fine for a process about to exit).
func (srv *server) close(ctx context.Context) {
	srv.mu.Lock()
	srv.closed = true
	for _, s := range srv.sessions {
		stopTimer(s.grace)
		for _, t := range s.typing {
			t.Stop()
		}
	}
	// Before mu is let go: a reader that then finds srv.closed must find its
	// connection's context ended with this cause, too.
	srv.cancel(closeReason{websocket.StatusGoingAway, "server shutting down"})
	srv.mu.Unlock()

	done := make(chan struct{})
	go func() { srv.conns.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		srv.log.Warn("shutdown: connections still closing", "err", ctx.Err())
	}
}

// writeJSON answers with v as JSON, never cached.
func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// writeError answers {"error": {"code", "message"}}.
func writeError(w http.ResponseWriter, status int, e *chatError) {
	writeJSON(w, status, struct {
		Error *chatError `json:"error"`
	}{e})
}

// writeRawJSON answers with b, which is JSON already.
func writeRawJSON(w http.ResponseWriter, status int, b []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	w.Write(b)
}

// crossSite reports whether a state-changing request comes from another
// site: its Origin is neither this host nor allowed by -origins, or, without
// an Origin, the browser's Sec-Fetch-Site says so. Like a WebSocket
// handshake (coder/websocket checks the same), a form on another site must
// not post as our users.
func (srv *server) crossSite(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		site := r.Header.Get("Sec-Fetch-Site")
		return site == "cross-site"
	}
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" {
		return true // "null" and other opaque origins
	}
	if strings.EqualFold(u.Host, r.Host) {
		return false
	}
	for _, pattern := range srv.cfg.Origins {
		target := u.Host
		if strings.Contains(pattern, "://") {
			target = u.Scheme + "://" + u.Host
		}
		if ok, _ := path.Match(strings.ToLower(pattern), strings.ToLower(target)); ok {
			return false
		}
	}
	return true
}

// ---------------------------------------------------------------------------
// 2. Rooms and fan-out
// ---------------------------------------------------------------------------

// room is a named group of sessions and its last cfg.History messages.
// Guarded by srv.mu.
type room struct {
	name string
	// members is kept sorted by name, as room_joined lists them: a join
	// then costs a binary search and a copy, not a sort of the whole room.
	members []*session
	history []message

	// The names that room_joined lists (the first `listed` members, sorted),
	// and the same encoded as the end of a room_joined event: `[…]},"seq":`.
	// Every joiner of a crowd gets the same 200 names, 3 KiB that each of
	// their outboxes would keep: they are encoded once and the outboxes
	// share them, until a change among them (changed) drops both. (An
	// outbox's byte count still counts them, as if they were its own.)
	listed int // cfg.PresenceLimit
	names  []string
	users  []byte
}

// byName orders sessions by their lowercase name, then by name.
func byName(a, b *session) int {
	return cmp.Or(strings.Compare(a.key, b.key), strings.Compare(a.name, b.name))
}

// add puts s among the members, in order.
func (r *room) add(s *session) {
	i, _ := slices.BinarySearchFunc(r.members, s, byName)
	r.members = slices.Insert(r.members, i, s)
	r.changed(i)
}

// remove takes s out of the members. Its name must not have changed since
// add: the search goes by name.
func (r *room) remove(s *session) {
	i, _ := slices.BinarySearchFunc(r.members, s, byName)
	for ; i < len(r.members); i++ {
		if r.members[i] == s {
			r.members = slices.Delete(r.members, i, i+1)
			r.changed(i)
			return
		}
	}
}

// changed drops the names kept for room_joined if member i was among them.
func (r *room) changed(i int) {
	if i < r.listed {
		r.names, r.users = nil, nil
	}
}

// usernames lists the room's members sorted by their lowercase form, at
// most r.listed of them. The list is shared: it must not be changed.
func (r *room) usernames() []string {
	if r.names == nil {
		r.names = make([]string, 0, min(len(r.members), r.listed))
		for _, m := range r.members[:cap(r.names)] {
			r.names = append(r.names, m.name)
		}
	}
	return r.names
}

// message is a stored room message: the data of new_message.
type message struct {
	ID        int64  `json:"id"`
	Room      string `json:"room"`
	Username  string `json:"username"`
	Text      string `json:"text"`
	Timestamp string `json:"timestamp"`
}

// privateMessage is the data of private_message.
type privateMessage struct {
	ID        int64  `json:"id"`
	From      string `json:"from"`
	To        string `json:"to"`
	Text      string `json:"text"`
	Timestamp string `json:"timestamp"`
}

// timestamp is the server's UTC time in RFC 3339 with milliseconds.
func timestamp() string {
	return time.Now().UTC().Format("2006-01-02T15:04:05.000Z07:00")
}

// encodeEvent encodes an event without its seq: `{"event":…,"data":…,"seq":`.
// Each recipient's writer appends its own seq (session.appendEvents).
func encodeEvent(event string, data any) []byte {
	return encode(`{"event":"`+event+`","data":`, data, `,"seq":`)
}

// encodeAck encodes an ack event without its seq, like encodeEvent.
func encodeAck(ack int64, data ackData) []byte {
	return encode(`{"event":"ack","ack":`+strconv.FormatInt(ack, 10)+`,"data":`, data, `,"seq":`)
}

// encode returns head, v as JSON, and tail, in a new slice of just that
// size: an event may stay in outboxes for long, so it keeps no spare
// capacity. Text is not HTML-escaped (json.Marshal would make each '<' six
// bytes): it is data, and the page shows it with textContent.
func encode(head string, v any, tail string) []byte {
	buf := encodeBuffers.Get().(*bytes.Buffer)
	buf.Reset()
	enc := json.NewEncoder(buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		panic(err) // our own types always encode
	}
	js := bytes.TrimSuffix(buf.Bytes(), []byte("\n")) // Encode ends with a newline
	b := make([]byte, 0, len(head)+len(js)+len(tail))
	b = append(append(append(b, head...), js...), tail...)
	if buf.Cap() <= 64<<10 { // an outsize one goes to the garbage collector
		encodeBuffers.Put(buf)
	}
	return b
}

// encodeBuffers are encode's scratch buffers.
var encodeBuffers = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// broadcast sends one event to every member of r except skip. The event is
// encoded once, here, and the same bytes go into every member's outbox.
func (srv *server) broadcast(r *room, skip *session, event string, data any) {
	body := encodeEvent(event, data)
	for _, m := range r.members {
		if m != skip {
			m.push(body)
		}
	}
}

// announce is broadcast for presence events (joins, leaves, renames,
// typing), which a crowd does not get (PROTOCOL.md section 7).
func (srv *server) announce(r *room, skip *session, event string, data any) {
	if len(r.members) <= srv.cfg.PresenceLimit {
		srv.broadcast(r, skip, event, data)
	}
}

// roomJoined is the data of room_joined (and of join_room's ack).
type roomJoined struct {
	Room    string    `json:"room"`
	Users   []string  `json:"users"`
	Count   int       `json:"count"`
	History []message `json:"history"`
	room    *room
}

// join adds s to the room called name, creating it if needed: s gets
// room_joined with the messages after id `since`, the others user_joined.
// srv.mu is held.
func (srv *server) join(s *session, name string, since int64) (*roomJoined, error) {
	r := s.rooms[name]
	if r == nil {
		if len(s.rooms) >= maxRooms {
			return nil, &chatError{"too_many_rooms", fmt.Sprintf("a session may be in at most %d rooms", maxRooms)}
		}
		r = srv.room(name)
		delete(srv.idle, r)
		r.add(s)
		s.rooms[name] = r
		srv.announce(r, s, "user_joined", userEvent{r.name, s.name})
	}
	joined := &roomJoined{Room: r.name, Users: r.usernames(), Count: len(r.members), History: historySince(r, since), room: r}
	s.pushShared(encodeJoined(`{"event":"room_joined","data":{`, joined))
	return joined, nil
}

// encodeJoined encodes an event that carries the fields of room_joined
// (room_joined itself, and join_room's ack), head and then those fields,
// in two parts: the joiner's own (room, count and history), and the users
// list, which is the room's r.users, shared. (Room names need no escaping
// in JSON: letters, digits, '-', '_', '.'.)
func encodeJoined(head string, j *roomJoined) (own, shared []byte) {
	r := j.room
	if r.users == nil {
		r.users = encode("", j.Users, `},"seq":`)
	}
	head += `"room":"` + j.Room + `","count":` + strconv.Itoa(j.Count) + `,"history":`
	return encode(head, j.History, `,"users":`), r.users
}

// room returns the room called name, creating it if needed. srv.mu is held.
func (srv *server) room(name string) *room {
	r := srv.rooms[name]
	if r == nil {
		r = &room{name: name, listed: srv.cfg.PresenceLimit}
		srv.rooms[name] = r
	}
	return r
}

// historySince returns the room's messages with an id above since.
func historySince(r *room, since int64) []message {
	i := sort.Search(len(r.history), func(i int) bool { return r.history[i].ID > since })
	return append([]message{}, r.history[i:]...)
}

// leave removes s from r: typing stops, the others get user_left. srv.mu
// is held.
func (srv *server) leave(s *session, r *room) {
	srv.stopTyping(s, r)
	srv.announce(r, s, "user_left", userEvent{r.name, s.name})
	r.remove(s)
	delete(s.rooms, r.name)
	srv.forgetIdle(r)
}

// forgetIdle bounds the rooms nobody is in. One without history is
// forgotten at once; one with history is kept for /messages and for the
// next joiner, but only cfg.MaxIdleRooms of those: past that, the one whose
// last message is oldest goes. Without this cap, a client joining and
// leaving new names in a loop would grow the map for ever. srv.mu is held.
func (srv *server) forgetIdle(r *room) {
	if len(r.members) > 0 {
		return
	}
	if len(r.history) == 0 {
		delete(srv.rooms, r.name)
		return
	}
	srv.idle[r] = struct{}{}
	if len(srv.idle) <= srv.cfg.MaxIdleRooms {
		return
	}
	var oldest *room
	for o := range srv.idle {
		if oldest == nil || o.history[len(o.history)-1].ID < oldest.history[len(oldest.history)-1].ID {
			oldest = o
		}
	}
	delete(srv.idle, oldest)
	delete(srv.rooms, oldest.name)
}

// userEvent is the data of user_joined and user_left.
type userEvent struct {
	Room     string `json:"room"`
	Username string `json:"username"`
}

// typingEvent is the data of user_typing.
type typingEvent struct {
	Room     string `json:"room"`
	Username string `json:"username"`
	Typing   bool   `json:"typing"`
}

// stopTyping turns s's typing indicator in r off, if it is on. srv.mu is
// held.
func (srv *server) stopTyping(s *session, r *room) {
	t := s.typing[r.name]
	if t == nil {
		return
	}
	t.Stop()
	delete(s.typing, r.name)
	srv.announce(r, s, "user_typing", typingEvent{r.name, s.name, false})
}

// ---------------------------------------------------------------------------
// 3. Events: decoding, acks, and one function per event
// ---------------------------------------------------------------------------

// envelope is one event from a client (PROTOCOL.md section 1).
type envelope struct {
	Event string          `json:"event"`
	Data  json.RawMessage `json:"data"`
	Ack   json.RawMessage `json:"ack"`
}

// chatError is a failure with a code of PROTOCOL.md section 4.
type chatError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *chatError) Error() string { return e.Code + ": " + e.Message }

func badRequest(format string, args ...any) *chatError {
	return &chatError{"bad_request", fmt.Sprintf(format, args...)}
}

// splitEnvelopes splits a client message into its envelopes: one JSON
// object, or a JSON array of them (each element still to be checked). It
// fails only when msg is not JSON at all.
func splitEnvelopes(msg []byte) ([]json.RawMessage, *chatError) {
	msg = bytes.TrimSpace(msg)
	if !json.Valid(msg) {
		return nil, badRequest("the message is not valid JSON")
	}
	if msg[0] != '[' {
		return []json.RawMessage{msg}, nil
	}
	var list []json.RawMessage
	json.Unmarshal(msg, &list) // cannot fail: valid JSON, an array
	return list, nil
}

// decodeEnvelope checks one envelope. It returns the ack number (0 for none)
// even when the rest is bad, so that the failure can be answered by ack.
func decodeEnvelope(raw json.RawMessage) (envelope, int64, error) {
	var env envelope
	if !json.Valid(raw) {
		return env, 0, badRequest("the message is not valid JSON")
	}
	if raw[0] != '{' {
		return env, 0, badRequest("an event must be a JSON object with an \"event\" name")
	}
	// Data and Ack take any JSON, so in an object the only type error left
	// is an event name that is not a string; Unmarshal still fills the
	// other fields, and the ack number can answer the failure.
	badName := json.Unmarshal(raw, &env) != nil
	var ack int64
	if len(env.Ack) > 0 && string(env.Ack) != "null" {
		n, err := strconv.ParseInt(string(env.Ack), 10, 64)
		if err != nil || n <= 0 {
			return env, 0, badRequest("ack must be a positive integer")
		}
		ack = n
	}
	if badName || !validEventName(env.Event) {
		return env, ack, badRequest("event must be 1-32 characters of a-z and _")
	}
	return env, ack, nil
}

func validEventName(name string) bool {
	if len(name) < 1 || len(name) > 32 {
		return false
	}
	for _, c := range []byte(name) {
		if (c < 'a' || c > 'z') && c != '_' {
			return false
		}
	}
	return true
}

// ackData is the data of an ack event: ok, and either the error or the
// event's result (PROTOCOL.md section 4).
type ackData struct {
	OK       bool            `json:"ok"`
	Error    *chatError      `json:"error,omitempty"`
	Message  any             `json:"message,omitempty"`  // send_message, private_message
	Username string          `json:"username,omitempty"` // set_username
	Data     json.RawMessage `json:"data,omitempty"`     // echo_message
	*roomJoined
	*roomList
}

// events maps each client event to the function that applies it. Each runs
// with srv.mu held, pushes the events it causes, and returns its ack.
var events = map[string]func(srv *server, s *session, data json.RawMessage) (ackData, error){
	"echo_message":    (*server).echoMessage,
	"send_message":    (*server).sendMessage,
	"join_room":       (*server).joinRoom,
	"leave_room":      (*server).leaveRoom,
	"set_username":    (*server).setUsername,
	"typing_start":    (*server).typingStart,
	"typing_stop":     (*server).typingStop,
	"private_message": (*server).privateMessage,
	"list_rooms":      (*server).listRooms,
}

// handleMessage applies every envelope of one WebSocket message, in order:
// a bad one gets its error and the others are still applied. before runs
// ahead of each envelope. It reports false once the session has ended.
func (srv *server) handleMessage(s *session, msg []byte, before func()) bool {
	list, err := splitEnvelopes(msg)
	if err != nil {
		list = []json.RawMessage{msg} // handle answers it: bad_request
	}
	for _, raw := range list {
		before()
		if !srv.handle(s, raw) {
			return false
		}
	}
	return true
}

// rejoinable events are safe to apply again: a resent one is applied again
// rather than answered from memory. Their answers carry a room's history
// or the whole room list, too big to keep 256 of for every session.
var rejoinable = map[string]bool{"join_room": true, "list_rooms": true, "echo_message": true}

// handle applies one envelope and answers it: by ack when it has an ack
// number, else by an error event if it failed. It reports false when the
// session has ended (or the server is closing), and nothing was done.
func (srv *server) handle(s *session, raw json.RawMessage) bool {
	env, ack, err := decodeEnvelope(raw)
	srv.mu.Lock()
	defer srv.unlock()
	if s.ended || srv.closed {
		return false
	}
	if !s.rate.take(srv.cfg.Rate, srv.cfg.Burst, time.Now()) {
		// Not remembered: the client may send the same ack number again.
		s.pushShared(encodeAnswer(env.Event, ack, ackData{}, &chatError{"rate_limited", "too many events: slow down"}))
		return true
	}
	if answer, ok := s.acks[ack]; ok {
		s.push(answer) // a resent event: answered again, not applied again
		return true
	}
	var result ackData
	if err == nil {
		if apply := events[env.Event]; apply != nil {
			result, err = apply(srv, s, env.Data)
		} else {
			err = &chatError{"unknown_event", fmt.Sprintf("there is no event %q", env.Event)}
		}
	}
	if ack == 0 && err == nil {
		return true // done, and nobody asked to hear so
	}
	answer, shared := encodeAnswer(env.Event, ack, result, err)
	if ack > 0 && !rejoinable[env.Event] { // (only join_room's answer has a shared part)
		s.acks[ack] = answer
		s.ackOrder = append(s.ackOrder, ack)
		if len(s.ackOrder) > rememberedAcks {
			delete(s.acks, s.ackOrder[0])
			s.ackOrder = s.ackOrder[1:]
		}
	}
	s.pushShared(answer, shared)
	return true
}

// encodeAnswer encodes the answer to an event: an ack when the client gave
// an ack number, else an error event (only when err is set). A join's ack
// carries the fields of room_joined, and like room_joined it comes in two
// parts, the second the room's shared users list (encodeJoined); every
// other answer is one.
func encodeAnswer(event string, ack int64, result ackData, err error) (answer, shared []byte) {
	var ce *chatError
	if err != nil && !errors.As(err, &ce) {
		ce = badRequest("%v", err)
	}
	if ack == 0 {
		return encodeEvent("error", struct {
			*chatError
			Event string `json:"event,omitempty"`
		}{ce, event}), nil
	}
	if ce != nil {
		result = ackData{Error: ce}
	} else {
		result.OK = true
	}
	if j := result.roomJoined; j != nil {
		return encodeJoined(`{"event":"ack","ack":`+strconv.FormatInt(ack, 10)+`,"data":{"ok":true,`, j)
	}
	return encodeAck(ack, result), nil
}

// decodeData decodes an event's data object into v. Absent or null data is
// an empty object.
func decodeData(data json.RawMessage, v any) error {
	if len(data) == 0 || string(data) == "null" {
		return nil
	}
	if data[0] != '{' {
		return badRequest("data must be a JSON object")
	}
	if err := json.Unmarshal(data, v); err != nil {
		return badRequest("data has the wrong shape: %v", err)
	}
	return nil
}

// memberRoom checks a room name and that s is in that room.
func memberRoom(s *session, name string) (*room, error) {
	if name == "" {
		name = defaultRoomName
	}
	if err := validRoom(name); err != nil {
		return nil, err
	}
	r := s.rooms[name]
	if r == nil {
		return nil, &chatError{"not_in_room", fmt.Sprintf("you are not in room %q: join it first", name)}
	}
	return r, nil
}

// echoMessage sends the data back to the sender alone: the "hello world" of
// real-time.
func (srv *server) echoMessage(s *session, data json.RawMessage) (ackData, error) {
	if len(data) == 0 {
		data = json.RawMessage("null")
	}
	s.push(encodeEvent("echo_response", data))
	return ackData{Data: data}, nil
}

func (srv *server) sendMessage(s *session, data json.RawMessage) (ackData, error) {
	var req struct{ Text, Room string }
	if err := decodeData(data, &req); err != nil {
		return ackData{}, err
	}
	r, err := memberRoom(s, req.Room)
	if err != nil {
		return ackData{}, err
	}
	if err := validText(req.Text); err != nil {
		return ackData{}, err
	}
	srv.stopTyping(s, r)
	m := srv.store(r, s.name, req.Text)
	return ackData{Message: m}, nil
}

// store keeps a message in the room's history and sends it to every member.
// srv.mu is held.
func (srv *server) store(r *room, username, text string) message {
	srv.nextID++
	m := message{ID: srv.nextID, Room: r.name, Username: username, Text: text, Timestamp: timestamp()}
	if len(r.history) < srv.cfg.History {
		r.history = append(r.history, m)
	} else if srv.cfg.History > 0 { // full: drop the oldest
		copy(r.history, r.history[1:])
		r.history[len(r.history)-1] = m
	}
	srv.broadcast(r, nil, "new_message", m)
	return m
}

func (srv *server) joinRoom(s *session, data json.RawMessage) (ackData, error) {
	var req struct {
		Room  string
		Since int64
	}
	if err := decodeData(data, &req); err != nil {
		return ackData{}, err
	}
	if err := validRoom(req.Room); err != nil {
		return ackData{}, err
	}
	joined, err := srv.join(s, req.Room, req.Since)
	if err != nil {
		return ackData{}, err
	}
	return ackData{roomJoined: joined}, nil
}

func (srv *server) leaveRoom(s *session, data json.RawMessage) (ackData, error) {
	var req struct{ Room string }
	if err := decodeData(data, &req); err != nil {
		return ackData{}, err
	}
	if err := validRoom(req.Room); err != nil {
		return ackData{}, err
	}
	r, err := memberRoom(s, req.Room)
	if err != nil {
		return ackData{}, err
	}
	srv.leave(s, r)
	return ackData{}, nil
}

func (srv *server) setUsername(s *session, data json.RawMessage) (ackData, error) {
	var req struct{ Username string }
	if err := decodeData(data, &req); err != nil {
		return ackData{}, err
	}
	name, err := validUsername(req.Username)
	if err != nil {
		return ackData{}, err
	}
	if other := srv.names[strings.ToLower(name)]; other != nil && other != s {
		return ackData{}, &chatError{"username_taken", fmt.Sprintf("%q is taken", name)}
	}
	old := s.name
	if name == old {
		return ackData{Username: name}, nil
	}
	for _, r := range s.rooms {
		r.remove(s) // while the old name still finds it
	}
	delete(srv.names, s.key)
	s.name, s.key = name, strings.ToLower(name)
	srv.names[s.key] = s
	for _, roomName := range slices.Sorted(maps.Keys(s.rooms)) {
		r := s.rooms[roomName]
		r.add(s)
		renamed := struct {
			Room string `json:"room"`
			Old  string `json:"old"`
			New  string `json:"new"`
		}{r.name, old, name}
		srv.announce(r, s, "user_renamed", renamed)
		s.push(encodeEvent("user_renamed", renamed))
	}
	return ackData{Username: name}, nil
}

func (srv *server) typingStart(s *session, data json.RawMessage) (ackData, error) {
	var req struct{ Room string }
	if err := decodeData(data, &req); err != nil {
		return ackData{}, err
	}
	r, err := memberRoom(s, req.Room)
	if err != nil {
		return ackData{}, err
	}
	// Every typing_start is passed on (clients forget a typing: true they
	// have not seen repeated for 6 s) and restarts the timer.
	stopTimer(s.typing[r.name])
	var t *time.Timer
	t = time.AfterFunc(srv.cfg.TypingTimeout, func() {
		srv.mu.Lock()
		defer srv.unlock()
		if s.typing[r.name] == t {
			srv.stopTyping(s, r)
		}
	})
	s.typing[r.name] = t
	srv.announce(r, s, "user_typing", typingEvent{r.name, s.name, true})
	return ackData{}, nil
}

func (srv *server) typingStop(s *session, data json.RawMessage) (ackData, error) {
	var req struct{ Room string }
	if err := decodeData(data, &req); err != nil {
		return ackData{}, err
	}
	r, err := memberRoom(s, req.Room)
	if err != nil {
		return ackData{}, err
	}
	srv.stopTyping(s, r)
	return ackData{}, nil
}

func (srv *server) privateMessage(s *session, data json.RawMessage) (ackData, error) {
	var req struct{ To, Text string }
	if err := decodeData(data, &req); err != nil {
		return ackData{}, err
	}
	to := srv.names[strings.ToLower(strings.TrimSpace(req.To))]
	if to == nil {
		return ackData{}, &chatError{"user_not_found", fmt.Sprintf("nobody called %q is online", req.To)}
	}
	if err := validText(req.Text); err != nil {
		return ackData{}, err
	}
	srv.nextID++
	m := privateMessage{ID: srv.nextID, From: s.name, To: to.name, Text: req.Text, Timestamp: timestamp()}
	body := encodeEvent("private_message", m)
	to.push(body)
	if to != s {
		s.push(body)
	}
	return ackData{Message: m}, nil
}

// roomList is the data of rooms (and of list_rooms's ack).
type roomList struct {
	Rooms []roomInfo `json:"rooms"`
}

type roomInfo struct {
	Name  string `json:"name"`
	Users int    `json:"users"`
}

func (srv *server) listRooms(s *session, data json.RawMessage) (ackData, error) {
	if err := decodeData(data, &struct{}{}); err != nil {
		return ackData{}, err
	}
	list := &roomList{Rooms: []roomInfo{}}
	for _, name := range slices.Sorted(maps.Keys(srv.rooms)) {
		if n := len(srv.rooms[name].members); n > 0 {
			list.Rooms = append(list.Rooms, roomInfo{name, n})
		}
	}
	s.push(encodeEvent("rooms", list))
	return ackData{roomList: list}, nil
}

// ---------------------------------------------------------------------------
// 4. The rules of PROTOCOL.md section 7
// ---------------------------------------------------------------------------

// validUsername trims the name and checks it: 1–24 letters, digits, spaces,
// '-', '_' and '.'.
func validUsername(name string) (string, error) {
	name = strings.TrimSpace(name)
	n := utf8.RuneCountInString(name)
	ok := n >= 1 && n <= maxUsername && utf8.ValidString(name)
	for _, c := range name {
		ok = ok && (unicode.IsLetter(c) || unicode.IsDigit(c) || strings.ContainsRune(" -_.", c))
	}
	if !ok {
		return "", &chatError{"invalid_username", "a username is 1-24 letters, digits, spaces, '-', '_' or '.'"}
	}
	return name, nil
}

// validRoom checks a room name: 1–32 letters, digits, '-', '_' and '.'.
func validRoom(name string) error {
	n := utf8.RuneCountInString(name)
	ok := n >= 1 && n <= maxRoomName && utf8.ValidString(name)
	for _, c := range name {
		ok = ok && (unicode.IsLetter(c) || unicode.IsDigit(c) || strings.ContainsRune("-_.", c))
	}
	if !ok {
		return &chatError{"invalid_room", "a room name is 1-32 letters, digits, '-', '_' or '.'"}
	}
	return nil
}

// validText checks a message: 1–2000 characters once spaces are trimmed.
// The text is stored as given.
func validText(text string) error {
	n := utf8.RuneCountInString(strings.TrimSpace(text))
	if n < 1 || n > maxText {
		return &chatError{"invalid_message", fmt.Sprintf("a message is 1-%d characters", maxText)}
	}
	return nil
}

// ---------------------------------------------------------------------------
// 5. The WebSocket transport: GET /ws
// ---------------------------------------------------------------------------
//
// The life of a connection. serveWebSocket upgrades the request, and
// serveConn attaches the connection to its session and starts three things:
//
//   - the reader (read): it waits for the client's next message and handles
//     it, for as long as the connection lives;
//   - a writer (writeLoop), only while there is something to send, and
//     never more than one: the only goroutine that writes messages. A push
//     to the session's outbox starts one (wake), and it ends once the outbox
//     is drained (rest). An idle connection has none;
//   - a ping cfg.PingEvery after the last pong, from a timer (ping).
//
// The connection's context ends when it must close: its session was taken
// over, fell behind or ended, the server is shutting down, the client
// closed, a write or a ping failed. Its cause says why: a closeReason when
// the server ends it, a code and reason the client reads. Then a writer runs
// (never resting once ctx has ended) and closes the connection: with that
// code and reason, or, when the cause is an error, at once. The reader's
// Read fails: it waits for the writers and pings (finish) and lets go of
// the session, which stays for cfg.Grace.
//
// Under coder/websocket is a wsNetConn: it sends each message in one system
// call and keeps no buffer while the connection is idle.

// closeReason is why a connection ends: the close code and reason the
// client reads. It is the cause of the connection's context.
type closeReason struct {
	code   websocket.StatusCode
	reason string
}

func (c closeReason) Error() string { return fmt.Sprintf("close %d: %s", c.code, c.reason) }

// wsConn is one WebSocket connection attached to a session.
type wsConn struct {
	conn   *websocket.Conn
	net    *wsNetConn // under conn
	s      *session
	ctx    context.Context // ends when the connection must close; its cause says why
	cancel context.CancelCauseFunc

	// mu guards writing and finished. Lock order: srv.mu, then a session's
	// outboxMu (push calls wake with both held), then mu.
	mu sync.Mutex
	// writing is true while a writer runs; also before the first one, which
	// serveConn starts once the welcome is ready; and for good once a writer
	// has closed the connection. While it is true, wake starts no writer.
	writing  bool
	finished bool           // read is done: no writer or ping starts again
	running  sync.WaitGroup // writers and pings, which finish waits for
	pending  wakeup         // "the outbox has more": for the running writer
	written  wakeup         // "the writer has written": for catchUp

	// What one writer hands on to the next. Only the running writer touches
	// them (mu orders one writer before the next).
	welcome []byte    // sent first; nil once it is
	after   int64     // the seq of the last event written
	wrote   time.Time // when, for pace

	pinger *time.Timer // the next ping
}

// serveWebSocket is GET /ws: it upgrades the request to a WebSocket and
// hands the connection to serveConn.
func (srv *server) serveWebSocket(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	after, err := parseSeq(q.Get("after"))
	if err != nil {
		http.Error(w, "after must be a seq number", http.StatusBadRequest)
		return
	}
	hj := &smallBuffers{ResponseWriter: w}
	conn, err := websocket.Accept(hj, r, &websocket.AcceptOptions{OriginPatterns: srv.cfg.Origins})
	if err != nil {
		return // Accept has answered (403 for a foreign origin)
	}
	// The HTTP part is over. The connection goes on in goroutines of its
	// own (serveConn starts them), and this handler returns: net/http's
	// goroutine, with the request and everything it parsed, is freed. An
	// idle connection is smaller for it (README, Performance).
	srv.serveConn(conn, hj.conn, q.Get("sid"), q.Get("username"), after)
}

// serveConn attaches the connection to a new or resumed session, and starts
// its reader, its first writer and its pings.
func (srv *server) serveConn(conn *websocket.Conn, nc *wsNetConn, sid, username string, after int64) {
	if !srv.track() {
		conn.Close(websocket.StatusGoingAway, "server shutting down")
		return
	}
	conn.SetReadLimit(maxFrame)
	ctx, cancel := context.WithCancelCause(srv.ctx)
	c := &wsConn{
		conn: conn, net: nc, ctx: ctx, cancel: cancel,
		pending: make(wakeup, 1), written: make(wakeup, 1),
		writing: true, // no writer may start before the welcome is ready
	}

	// Resume the session the client names, or else open a new one.
	var s *session
	var err error
	if sid != "" {
		s, err = srv.resumeSession(sid, after, c)
	}
	resumed := s != nil
	if !resumed && err != errShuttingDown {
		after = 0
		s, err = srv.openSession(username, c)
	}
	if err != nil {
		if err == errShuttingDown {
			conn.Close(websocket.StatusGoingAway, "server shutting down")
		} else { // errServerBusy
			conn.Close(websocket.StatusTryAgainLater, "server busy")
		}
		cancel(nil)
		srv.conns.Done()
		return
	}

	c.s, c.after, c.welcome = s, after, srv.encodeWelcome(s, resumed)
	c.running.Add(1)
	go c.writeLoop()
	// Whenever ctx ends, a writer runs and closes the connection.
	context.AfterFunc(ctx, c.wake)
	c.mu.Lock()
	c.pinger = time.AfterFunc(srv.cfg.PingEvery, c.ping)
	c.mu.Unlock()
	go c.read()
}

// read is the connection's reader. It reads one message from the client
// and handles it, and then a fresh goroutine reads the next; when the
// connection ends, it lets go of it (the session stays for cfg.Grace).
//
// Why not a loop: handling an event (JSON, reflection) grows a goroutine's
// stack from 4 to 8 KiB, and a goroutine keeps the stack it grew to. A
// fresh one waits in Read on 4 KiB, and an idle connection is mostly that
// goroutine (README, Performance: 10,000 idle clients that had each sent
// one join_room took 21.6 KiB each with a loop, 16.6 KiB with this).
// Clients send little: at the rate limit, a new goroutine 20 times a second.
//
// It reads with a context that is never cancelled, because coder/websocket
// drops the connection without a close frame when a Read's context ends;
// a writer closes the connection instead.
func (c *wsConn) read() {
	srv := c.s.srv
	_, msg, err := c.conn.Read(context.Background())
	if err == nil && srv.handleMessage(c.s, msg, c.catchUp) {
		go c.read()
		return
	}
	// The connection is broken or closed (err), or the session has ended or
	// the server is closing, which has ended ctx already.
	c.cancel(err)
	c.finish()
	srv.detach(c.s, c)
	srv.conns.Done()
}

// finish is the reader's last step: a writer closes the connection (if
// none has), and once it and any ping are done, nothing starts again.
func (c *wsConn) finish() {
	c.wake()
	c.mu.Lock()
	c.finished = true
	c.pinger.Stop()
	c.mu.Unlock()
	c.running.Wait()
}

// stop ends the connection (transport.stop): the context's end has a writer
// close it (serveConn).
func (c *wsConn) stop(code websocket.StatusCode, reason string) {
	c.cancel(closeReason{code, reason})
}

// wake makes sure a writer runs: it tells the running one that more has
// come, or starts one. push calls it for every event.
func (c *wsConn) wake() {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.finished:
	case c.writing:
		c.pending.wake()
	default:
		c.writing = true
		c.running.Add(1)
		go c.writeLoop()
	}
}

// rest ends a writer's run, unless more came since it last looked, or ctx
// has ended: then the writer goes on, to close the connection. (The wake
// that ctx's end sends comes only once.)
func (c *wsConn) rest() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	select {
	case <-c.pending:
		return false
	default:
	}
	if c.ctx.Err() != nil {
		return false
	}
	c.writing = false
	return true
}

// writeLoop is a writer: while it runs, the only goroutine that writes
// messages to the connection. It sends the welcome first, then the events
// after c.after, batching all the events that are waiting into one message
// (pace says when), and ends when there is nothing more (rest). When ctx
// ends, or a write fails, it closes the connection: with the code and
// reason of ctx's cause when that is a closeReason, else at once, and stays
// the last writer.
func (c *wsConn) writeLoop() {
	defer c.running.Done()
	c.s.srv.writers.Add(1)
	defer c.s.srv.writers.Add(-1)
	var err error
	if c.welcome != nil {
		err = c.write(c.welcome)
		c.welcome = nil
	}
	for err == nil {
		c.pace()
		// What pending says, the two looks below are about to see. (Not
		// after them: the wake that ctx's end sends would be lost.)
		select {
		case <-c.pending:
		default:
		}
		if c.ctx.Err() != nil { // stopped: replaced, too slow, shutting down, or broken
			err = context.Cause(c.ctx)
			break
		}
		buf := writeBuffers.Get().(*[]byte)
		var last int64
		*buf, last = c.s.appendEvents((*buf)[:0], c.after, false)
		waiting := last > c.after
		if waiting {
			if err = c.write(*buf); err == nil {
				c.after = last
				c.s.markDelivered(c, last)
				c.wrote = time.Now()
				c.written.wake()
			}
		}
		putWriteBuffer(buf)
		if !waiting && c.rest() {
			return // drained: the next wake starts a writer again
		}
	}
	c.cancel(err) // (if not yet) a reader waiting in catchUp stops waiting
	// c.writing stays true: no writer starts after this one.
	var reason closeReason
	if errors.As(err, &reason) {
		c.conn.Close(reason.code, reason.reason)
	} else {
		c.conn.CloseNow() // the peer is gone or broken: no handshake to wait for
	}
}

// pace waits until the connection may write again, writeBudget allowing:
// events that arrive meanwhile go out together in the next write. (A
// connection stopped meanwhile closes after the wait.)
func (c *wsConn) pace() {
	wait := time.Duration(c.s.srv.writers.Load())*time.Second/writeBudget - time.Since(c.wrote)
	if wait > 0 {
		time.Sleep(wait)
	}
}

// write sends one message: coder/websocket frames it into the gathered
// buffer, and send writes it, within writeWait.
func (c *wsConn) write(msg []byte) error {
	c.net.gather()
	err := c.conn.Write(context.Background(), websocket.MessageText, msg)
	return errors.Join(err, c.net.send())
}

// writeBuffers are the buffers that messages are built and gathered in. A
// writer takes them for each write and gives them back, so that an idle
// connection holds none.
var writeBuffers = sync.Pool{New: func() any { return new([]byte) }}

func putWriteBuffer(buf *[]byte) {
	if cap(*buf) <= 64<<10 { // an outsize one goes to the garbage collector
		writeBuffers.Put(buf)
	}
}

// ping sends a ping and waits for the pong, at most cfg.PongWait (a live
// client answers at once); the next ping is cfg.PingEvery after the pong.
// A client that does not answer is dropped. It runs on its timer's own
// goroutine.
func (c *wsConn) ping() {
	c.mu.Lock()
	if c.finished {
		c.mu.Unlock()
		return
	}
	c.running.Add(1)
	c.mu.Unlock()
	defer c.running.Done()

	ctx, cancel := context.WithTimeout(context.Background(), c.s.srv.cfg.PongWait)
	defer cancel()
	if err := c.conn.Ping(ctx); err != nil {
		c.cancel(fmt.Errorf("no pong: %w", err)) // a writer drops the connection
		return
	}
	c.mu.Lock()
	if !c.finished {
		c.pinger.Reset(c.s.srv.cfg.PingEvery)
	}
	c.mu.Unlock()
}

// catchUp holds the reader back while the writer is more than half an outbox
// behind: a client that sends a long batch of events (each answered, or each
// refused by the rate limit and answered) must not fall behind on its own
// answers and be dropped as too slow. Like TCP's flow control, the client
// is slowed to the pace at which it reads. Bounded by writeWait: a client
// that does not read at all is the slow-reader rule's business.
func (c *wsConn) catchUp() {
	deadline := time.Now().Add(writeWait)
	for c.s.unsent() > int64(c.s.srv.cfg.Outbox/2) && time.Now().Before(deadline) {
		select {
		case <-c.written:
		case <-c.ctx.Done():
			return
		case <-time.After(time.Until(deadline)):
		}
	}
}

// The buffers between a WebSocket and the network, in bytes. A connection
// keeps them for its whole life, and net/http's 4 KiB each would be most
// of an idle one. Client events are small. Server messages are gathered
// whole by wsNetConn, so the write buffer only needs to hold a control frame
// (at most 127 bytes): then a pong or a close, too, is one system call.
const (
	readBuffer  = 512
	writeBuffer = 128
)

// smallBuffers is the ResponseWriter that websocket.Accept hijacks: it hands
// over the connection as a wsNetConn, with small buffers around it.
type smallBuffers struct {
	http.ResponseWriter
	conn *wsNetConn
}

func (w *smallBuffers) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	w.conn = &wsNetConn{Conn: conn}
	// net/http's reader is kept only when it holds bytes it has read ahead:
	// a client that sent its first frame before it saw our answer.
	r := brw.Reader
	if r.Buffered() == 0 {
		r = bufio.NewReaderSize(w.conn, readBuffer)
	}
	return w.conn, bufio.NewReadWriter(r, bufio.NewWriterSize(w.conn, writeBuffer)), nil
}

// wsNetConn is the network connection under a WebSocket. While the writer
// gathers (wsConn.write), what coder/websocket writes is appended to a
// pooled buffer, and send writes it all in one system call: an idle
// connection holds no write buffer. Other writes (control frames: pongs,
// pings, the close) go straight to the network, or join the gathered
// message if they come while it is being written. mu keeps the writes in
// order (coder/websocket holds its own lock for each frame, and takes mu
// within it); send and Close take mu alone. Whoever holds mu writes with a
// deadline, so Close waits at most writeWait for it.
type wsNetConn struct {
	net.Conn

	mu       sync.Mutex
	gathered *[]byte // from writeBuffers; nil when not gathering
}

func (c *wsNetConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gathered != nil {
		*c.gathered = append(*c.gathered, p...)
		return len(p), nil
	}
	return c.write(p)
}

// Close sends what was gathered, then closes. coder/websocket closes the
// connection as soon as it has answered a client's close frame, and that
// answer may have joined a message that the writer has not sent yet.
func (c *wsNetConn) Close() error {
	c.send()
	return c.Conn.Close()
}

// gather starts gathering writes.
func (c *wsNetConn) gather() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gathered = writeBuffers.Get().(*[]byte)
	*c.gathered = (*c.gathered)[:0]
}

// send writes what was gathered, in one system call, and stops gathering.
func (c *wsNetConn) send() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	buf := c.gathered
	if buf == nil {
		return net.ErrClosed // Close has sent it
	}
	c.gathered = nil
	_, err := c.write(*buf)
	putWriteBuffer(buf)
	return err
}

// write writes p to the network within writeWait, or fails, and then the
// connection is of no more use. The deadline is the write's own, not the
// connection's context: a write cut short by a cancelled context would
// drop the connection without a close frame, and the client would never
// learn why it was closed.
func (c *wsNetConn) write(p []byte) (int, error) {
	c.Conn.SetWriteDeadline(time.Now().Add(writeWait))
	return c.Conn.Write(p)
}

// encodeWelcome encodes the welcome event of session s, the only event
// without a seq.
func (srv *server) encodeWelcome(s *session, resumed bool) []byte {
	srv.mu.Lock() // for s.name
	sid, username := s.sid, s.name
	srv.mu.Unlock()
	b, _ := json.Marshal(struct {
		Event string `json:"event"`
		Data  any    `json:"data"`
	}{"welcome", struct {
		SID      string `json:"sid"`
		Username string `json:"username"`
		Resumed  bool   `json:"resumed"`
	}{sid, username, resumed}})
	return b
}

// parseSeq parses an `after` cursor; empty is 0.
func parseSeq(v string) (int64, error) {
	if v == "" {
		return 0, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return 0, errors.New("not a seq number")
	}
	return n, nil
}
