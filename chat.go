// The chat itself: rooms, and how one message reaches every member.
//
// A room is a name, its members and its last messages, kept in one map
// under the server's one mutex (server.go). Fan-out is the heart of a chat
// server, and here it is a loop: broadcast encodes the event once, then
// appends the same bytes to every member's outbox (session.go). Appending
// never waits on a network. Each member's own transport (websocket.go,
// poll.go) is woken and sends at its own pace; a member that falls too far
// behind is dropped instead of slowing the room down.
//
// Compare a "hub" goroutine that owns the rooms and is fed by channels: the
// mutex does the same job, and a reader can see which code runs while the
// rooms are being changed (the code between Lock and Unlock).
package main

import (
	"cmp"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"
)

// room is a named group of sessions and its last cfg.History messages.
// Guarded by srv.mu.
type room struct {
	name string
	// members is kept sorted by name, as room_joined lists them: a join
	// then costs a binary search and a copy, not a sort of the whole room.
	members []*session
	history []entry
	users   usersList   // the names room_joined lists, kept encoded (speed.go)
	shared  historyList // the history as room_joined sends it (speed.go)
}

// byName orders sessions by their lowercase name, then by name.
func byName(a, b *session) int {
	return cmp.Or(strings.Compare(a.key, b.key), strings.Compare(a.name, b.name))
}

// add puts s among the members, in order.
func (r *room) add(s *session) {
	i, _ := slices.BinarySearchFunc(r.members, s, byName)
	r.members = slices.Insert(r.members, i, s)
	r.users.changed(i)
}

// remove takes s out of the members. Its name must not have changed since
// add: the search goes by name.
func (r *room) remove(s *session) {
	i, _ := slices.BinarySearchFunc(r.members, s, byName)
	for ; i < len(r.members); i++ {
		if r.members[i] == s {
			r.members = slices.Delete(r.members, i, i+1)
			r.users.changed(i)
			return
		}
	}
}

// message is a stored room message: the data of new_message.
type message struct {
	ID        int64  `json:"id"`
	Room      string `json:"room"`
	Username  string `json:"username"`
	Text      string `json:"text"`
	Timestamp string `json:"timestamp"`
}

// entry is a message in a room's history, with its JSON, encoded once when
// it is published: new_message, room_joined and /messages all send these
// same bytes, however many clients ask.
type entry struct {
	message
	json []byte
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

// broadcast sends one event to every member of r except skip. The event is
// encoded once (encodeEvent), and the same bytes go into every member's
// outbox. srv.mu is held.
func (srv *server) broadcast(r *room, skip *session, body []byte) {
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
		srv.broadcast(r, skip, encodeEvent(event, data))
	}
}

// publish keeps a message in the room's history, dropping the oldest past
// cfg.History, and broadcasts it to every member, the sender included.
// srv.mu is held.
func (srv *server) publish(r *room, username, text string) message {
	srv.nextID++
	m := message{ID: srv.nextID, Room: r.name, Username: username, Text: text, Timestamp: timestamp()}
	e := entry{m, encode("", m, "")}
	if len(r.history) < srv.cfg.History {
		r.history = append(r.history, e)
	} else if srv.cfg.History > 0 { // full: drop the oldest
		copy(r.history, r.history[1:])
		r.history[len(r.history)-1] = e
	}
	r.shared.changed()
	srv.metrics.stored.Add(1)
	srv.broadcast(r, nil, concat(`{"event":"new_message","data":`, e.json, `,"seq":`))
	return m
}

// roomJoined is the data of room_joined (and of join_room's ack):
// encodeJoined writes it.
type roomJoined struct {
	room    *room
	users   []string // the first cfg.PresenceLimit names
	count   int
	history [][]byte // the messages' JSON, comma-separated: historyList
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
	joined := &roomJoined{room: r, users: r.users.names(r.members), count: len(r.members), history: r.shared.since(r.history, since)}
	s.pushEvent(encodeJoined(`{"event":"room_joined","data":{`, joined))
	return joined, nil
}

// room returns the room called name, creating it if needed. srv.mu is held.
func (srv *server) room(name string) *room {
	r := srv.rooms[name]
	if r == nil {
		r = &room{name: name, users: usersList{listed: srv.cfg.PresenceLimit}}
		srv.rooms[name] = r
	}
	return r
}

// after returns the index in history of the first message with an id
// above since.
func after(history []entry, since int64) int {
	return sort.Search(len(history), func(i int) bool { return history[i].ID > since })
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

// startTyping turns s's typing indicator in r on, or keeps it on: it goes
// off by itself after cfg.TypingTimeout. Every typing_start is passed on
// (clients forget a typing: true they have not seen repeated for 6 s) and
// restarts the timer. srv.mu is held.
func (srv *server) startTyping(s *session, r *room) {
	stopTimer(s.typing[r.name])
	var t *time.Timer
	t = time.AfterFunc(srv.cfg.TypingTimeout, func() {
		srv.mu.Lock()
		defer srv.mu.Unlock()
		if s.typing[r.name] == t { // not stopped or restarted since
			srv.stopTyping(s, r)
		}
	})
	s.typing[r.name] = t
	srv.announce(r, s, "user_typing", typingEvent{r.name, s.name, true})
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
