// The events a client sends (PROTOCOL.md sections 1-4), and one small
// handler for each.
//
// Both transports deliver the same thing: a JSON envelope
// {"event": name, "data": {...}, "ack": n}, or an array of them
// (envelope.go). handle decodes one, looks its name up in the handlers
// table, and runs the handler with srv.mu held (post, with -data, lets go
// of it while the message is written to disk). A handler changes rooms and
// sessions, pushes the events it causes into outboxes (chat.go broadcasts
// them), and returns its result. handle then answers: by an ack when the
// client gave an ack number, by an error event when something failed and
// nobody asked.
//
// Acks make sending reliable: a client that lost its connection sends the
// same ack number again, and gets the answer it missed instead of a second
// copy of its message (the session remembers its last answers).
package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
)

// ackData is the data of an ack event: ok, and either the error or the
// event's result (PROTOCOL.md section 4).
type ackData struct {
	OK        bool            `json:"ok"`
	Error     *chatError      `json:"error,omitempty"`
	Message   any             `json:"message,omitempty"`   // send_message, private_message
	Duplicate bool            `json:"duplicate,omitempty"` // send_message: stored before, with this cid
	Username  string          `json:"username,omitempty"`  // set_username
	Data      json.RawMessage `json:"data,omitempty"`      // echo_message
	*roomJoined
	*roomList
}

// handlers maps each client event to the function that applies it. Each
// runs with srv.mu held (see post for the one exception), pushes the events
// it causes, and returns its
// result for the ack.
var handlers = map[string]func(srv *server, s *session, data json.RawMessage) (ackData, error){
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

// appliedAgain are the events whose answers are not remembered: they carry
// a room's history or the whole room list, too big to keep 256 of for every
// session. The event itself is remembered instead, where it is no bigger
// than maxRememberedEvent, and one resent with its ack number is applied
// again as it was first sent, whatever the resent one says. That is safe:
// they change nothing twice (joining a room one is in only answers again).
var appliedAgain = map[string]bool{"join_room": true, "list_rooms": true, "echo_message": true}

// maxRememberedEvent bounds an event of appliedAgain that is remembered, in
// bytes: about what the answer to a message of maxText characters takes.
// Of a bigger one (an echo of 16 KiB) only a hash is kept: the same event
// resent is applied again as it is sent, another is refused.
const maxRememberedEvent = 8 << 10

// answered is what a session remembers of an ack number: one of the three.
type answered struct {
	answer []byte          // the encoded answer, to send again
	event  json.RawMessage // or, for appliedAgain, the event to apply again
	digest *[32]byte       // or, for one of those too big to keep, its SHA-256
}

// handle applies one envelope and answers it: by ack when it has an ack
// number, else by an error event if it failed. It reports false when the
// session has ended (or the server is closing), and nothing was done.
func (srv *server) handle(s *session, raw json.RawMessage) bool {
	env, ack, err := decodeEnvelope(raw)
	// One event of a session at a time, even from two connections: an
	// event resent on a new connection waits until the first is answered,
	// then finds its answer remembered. (Only post, with -data, lets go of
	// srv.mu in the middle of an event.)
	s.handling.Lock()
	defer s.handling.Unlock()
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if s.ended || srv.closed {
		return false
	}
	if !s.rate.take(srv.cfg.Rate, srv.cfg.Burst, time.Now()) {
		// Not remembered: the client may send the same ack number again.
		srv.metrics.refused.add("rate_limited")
		s.pushEvent(encodeAnswer(env.Event, ack, ackData{}, &chatError{"rate_limited", "too many events: slow down"}))
		return true
	}
	a, again := s.acks[ack]
	if again { // a resent event: answered again, and never applied twice
		switch {
		case a.answer != nil:
			s.push(a.answer)
			return true
		case a.event != nil:
			env, _, err = decodeEnvelope(a.event) // applied again, as first sent
		case *a.digest == sha256.Sum256(raw):
			// the same big event: applied again, as sent
		default:
			// A big event cannot be applied again as first sent, for it
			// was not kept: another one under its number is the client's
			// mistake, and nothing is applied.
			err = badRequest("ack number %d was given to another event", ack)
		}
	}
	var result ackData
	if err == nil {
		if apply := handlers[env.Event]; apply != nil {
			result, err = apply(srv, s, env.Data)
		} else {
			err = &chatError{"unknown_event", fmt.Sprintf("there is no event %q", env.Event)}
		}
	}
	srv.metrics.refuse(err)
	if ack == 0 && err == nil {
		return true // done, and nobody asked to hear so
	}
	answer := encodeAnswer(env.Event, ack, result, err)
	switch {
	case ack == 0 || again: // (again: remembered already)
	case !appliedAgain[env.Event]: // (these answers are one part: body is all of it)
		s.remember(ack, answered{answer: answer.body})
	case len(raw) <= maxRememberedEvent:
		s.remember(ack, answered{event: bytes.Clone(raw)}) // not a piece of the client's whole message
	default:
		digest := sha256.Sum256(raw)
		s.remember(ack, answered{digest: &digest})
	}
	s.pushEvent(answer)
	return true
}

// remember keeps what answers ack number ack again, for a client that sends
// the same event again: the last rememberedAcks of them. srv.mu is held.
func (s *session) remember(ack int64, a answered) {
	s.acks[ack] = a
	s.ackOrder = append(s.ackOrder, ack)
	if len(s.ackOrder) > rememberedAcks {
		delete(s.acks, s.ackOrder[0])
		s.ackOrder = s.ackOrder[1:]
	}
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

// orGeneral is the room an optional room field names: general where the
// field is absent (or null). An empty name is a name, and an invalid one.
func orGeneral(room *string) string {
	if room == nil {
		return defaultRoomName
	}
	return *room
}

// memberRoom checks a room name and that s is in that room.
func memberRoom(s *session, name string) (*room, error) {
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

// sendMessage posts a message to a room the session is in. Its sender
// stops typing there first, so the others see typing end before the
// message. The ack carries the message (and duplicate, for a cid sent
// before).
func (srv *server) sendMessage(s *session, data json.RawMessage) (ackData, error) {
	var req struct {
		Text string
		Room *string // optional: nil where absent
		CID  string  // optional: "" is none
	}
	if err := decodeData(data, &req); err != nil {
		return ackData{}, err
	}
	r, err := memberRoom(s, orGeneral(req.Room))
	if err != nil {
		return ackData{}, err
	}
	if err := validText(req.Text); err != nil {
		return ackData{}, err
	}
	if err := validCID(req.CID); err != nil {
		return ackData{}, err
	}
	srv.stopTyping(s, r)
	m, duplicate, err := srv.post(r, s.name, req.Text, req.CID)
	if err != nil {
		return ackData{}, err
	}
	return ackData{Message: m, Duplicate: duplicate}, nil
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
	if other := srv.names[foldName(name)]; other != nil && other != s {
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
	s.name, s.key = name, foldName(name)
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
	var req struct{ Room *string }
	if err := decodeData(data, &req); err != nil {
		return ackData{}, err
	}
	r, err := memberRoom(s, orGeneral(req.Room))
	if err != nil {
		return ackData{}, err
	}
	srv.startTyping(s, r)
	return ackData{}, nil
}

func (srv *server) typingStop(s *session, data json.RawMessage) (ackData, error) {
	var req struct{ Room *string }
	if err := decodeData(data, &req); err != nil {
		return ackData{}, err
	}
	r, err := memberRoom(s, orGeneral(req.Room))
	if err != nil {
		return ackData{}, err
	}
	srv.stopTyping(s, r)
	return ackData{}, nil
}

// privateMessage goes to its recipient and back to its sender only; it is
// not stored.
func (srv *server) privateMessage(s *session, data json.RawMessage) (ackData, error) {
	var req struct{ To, Text string }
	if err := decodeData(data, &req); err != nil {
		return ackData{}, err
	}
	to := srv.names[foldName(strings.TrimSpace(req.To))]
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
