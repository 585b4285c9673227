// The chat itself: rooms, and how one message reaches every member.
//
// A room is a name, its members and its last messages, kept in one map
// under the server's one mutex (server.go). Fan-out is the heart of a chat
// server, and here it is a loop: publish encodes the event once, and
// broadcast appends the same bytes to every member's outbox (outbox.go).
// Appending never waits on a network. Each member's own transport
// (websocket.go, poll.go) is woken and sends at its own pace; a member that
// falls too far behind is dropped instead of slowing the room down.
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
	born    int64               // the id of its first message (of the oldest on disk, after a restart): forgetIdle keeps older rooms
	posting map[string]*posting // messages on their way to disk, by username and cid (post)
	writing int                 // messages on their way to disk (post)
	users   usersList           // the names room_joined lists, kept encoded (speed.go)
	shared  historyList         // the history as room_joined sends it (speed.go)
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
	CID       string `json:"cid,omitempty"` // the sender's own id for it (PROTOCOL.md section 4)
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

// broadcast sends one event to every member of r except skip. The caller
// encodes the event once (encodeEvent; publish for new_message), and the
// same bytes go into every member's outbox. srv.mu is held.
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

// post makes a new message of username's in room r and publishes it, or,
// when username already sent one with the same cid (PROTOCOL.md section 4,
// "Sending exactly once"), answers that one, stored the first time.
//
// Without -data that is all. With it, the message is first written to the
// journal (journal.go), and published only once it is on disk, so that
// nobody hears of a message a crash could lose. srv.mu is held; post lets
// go of it while it waits for the disk (the only place an event does), so
// that other messages can share the same write (group commit). Meanwhile
// the message is in r.posting, so that the same cid sent again waits for
// it instead of being stored twice.
func (srv *server) post(r *room, username, text, cid string) (m message, duplicate bool, err error) {
	if m, ok := r.sent(username, cid); ok {
		return m, true, nil
	}
	key := username + "\n" + cid
	if p := r.posting[key]; p != nil {
		srv.waitFor(p.done)
		return p.m, true, p.err
	}
	srv.nextID++
	m = message{ID: srv.nextID, Room: r.name, Username: username, Text: text, Timestamp: timestamp(), CID: cid}
	if srv.journal == nil {
		srv.publish(m)
		return m, false, nil
	}
	p := &posting{m: m, r: r, key: key, done: make(chan struct{})}
	if cid != "" {
		r.posting[key] = p
	}
	r.writing++ // r stays in srv.rooms until then (forgetIdle)
	// The id was given and the message queued in one hold of srv.mu: the
	// journal writes in the order of ids, and srv.posted is in that order.
	// The callback runs on the journal's goroutine: it only marks the
	// message written, without srv.mu, so that the journal never waits
	// for the chat. The poster publishes it once it has srv.mu again, or
	// another poster of the same batch that woke first (publishWritten).
	err = srv.journal.append(m, func(err error) {
		p.err = err
		close(p.done)
	})
	if err != nil { // the journal is closed: the server is stopping
		r.writing--
		delete(r.posting, key)
		return m, false, errNotStored
	}
	srv.posted = append(srv.posted, p)
	srv.waitFor(p.done)
	return m, false, p.err
}

// posting is a message on its way to the journal.
type posting struct {
	m    message
	r    *room
	key  string        // username and cid, in r.posting
	done chan struct{} // closed once it is written, or could not be
	err  error         // errNotStored, or what the journal answered
}

// waitFor lets go of srv.mu until done is closed, then publishes what the
// journal has written meanwhile. Only post waits.
func (srv *server) waitFor(done <-chan struct{}) {
	srv.mu.Unlock()
	<-done
	srv.mu.Lock()
	srv.publishWritten()
}

// publishWritten publishes, in the order of their ids, the messages the
// journal has written: the front of srv.posted, as far as it is done (the
// journal writes in the order it was given them). srv.mu is held.
func (srv *server) publishWritten() {
	for len(srv.posted) > 0 && isDone(srv.posted[0].done) {
		p := srv.posted[0]
		srv.posted[0] = nil
		srv.posted = srv.posted[1:]
		p.r.writing--
		delete(p.r.posting, p.key)
		if p.err == nil {
			srv.publish(p.m)
		} else {
			srv.log.Error("a message could not be stored", "err", p.err)
			p.err = errNotStored
			srv.forgetIdle(p.r)
		}
	}
}

// isDone reports whether done is closed.
func isDone(done <-chan struct{}) bool {
	select {
	case <-done:
		return true
	default:
		return false
	}
}

// errNotStored answers a message the journal could not write.
var errNotStored = &chatError{"server_busy", "the message could not be stored: try again later"}

// publish keeps a message in its room's history, dropping the oldest past
// cfg.History, and broadcasts it to every member, the sender included.
// srv.mu is held.
func (srv *server) publish(m message) {
	r := srv.room(m.Room)
	e := entry{m, encode("", m, "")}
	if r.born == 0 {
		r.born = m.ID
	}
	if len(r.history) < srv.cfg.History {
		r.history = append(r.history, e)
	} else if srv.cfg.History > 0 { // full: drop the oldest
		copy(r.history, r.history[1:])
		r.history[len(r.history)-1] = e
	}
	r.shared.changed()
	srv.metrics.stored.Add(1)
	srv.broadcast(r, nil, encodeEncoded("new_message", e.json))
	srv.forgetIdle(r) // a room may have nobody in it (the form posts to general): then it counts as idle
}

// keepHistory opens the journal in dir (journal.go) and gives each room
// the history kept there, with new ids above every one of it. From then on
// every room message is written there before it is published (post).
func (srv *server) keepHistory(dir string) error {
	j, history, err := openJournal(dir, srv.cfg.History, srv.snapshot)
	if err != nil {
		return err
	}
	srv.mu.Lock()
	defer srv.mu.Unlock()
	for _, m := range history { // sorted by id
		r := srv.room(m.Room)
		if r.born == 0 {
			r.born = m.ID
		}
		r.history = append(r.history, entry{m, encode("", m, "")})
		srv.nextID = max(srv.nextID, m.ID)
	}
	// Nobody is in any room yet: they are all idle. A restart must not
	// lose the rooms that were busy before it, so the cap on idle rooms
	// starts at as many as there are now (forgetIdle lowers it again).
	srv.idleCap = max(srv.cfg.MaxIdleRooms, len(srv.rooms))
	for _, r := range srv.rooms {
		srv.idle[r] = struct{}{}
	}
	srv.journal = j
	return nil
}

// snapshot returns every message the rooms keep: the journal rewrites
// itself with them alone when it compacts.
func (srv *server) snapshot() []message {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	srv.publishWritten() // every message the journal has written is in a room first
	var kept []message
	for _, r := range srv.rooms {
		for _, e := range r.history {
			kept = append(kept, e.message)
		}
	}
	return kept
}

// sent returns the message in r's history that username sent with cid,
// if there is one: a message sent again, after a reconnect or a restart
// (PROTOCOL.md section 4, "Sending exactly once").
func (r *room) sent(username, cid string) (message, bool) {
	if cid == "" {
		return message{}, false
	}
	for _, e := range r.history {
		if e.CID == cid && e.Username == username {
			return e.message, true
		}
	}
	return message{}, false
}

// roomJoined is the data of room_joined (and of join_room's ack):
// encodeJoined writes it.
type roomJoined struct {
	room    *room // its users list (the first cfg.PresenceLimit names) is kept encoded: usersList
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
	joined := &roomJoined{room: r, count: len(r.members), history: r.shared.since(r.history, since)}
	s.pushEvent(encodeJoined(`{"event":"room_joined","data":{`, joined))
	return joined, nil
}

// room returns the room called name, creating it if needed. srv.mu is held.
func (srv *server) room(name string) *room {
	r := srv.rooms[name]
	if r == nil {
		r = &room{name: name, posting: make(map[string]*posting), users: usersList{listed: srv.cfg.PresenceLimit}}
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
// next joiner, but only cfg.MaxIdleRooms of those (srv.idleCap: more just
// after a restart, until as many have been joined). Without this cap, a
// client joining and leaving new names in a loop would grow the map for
// ever. Past it, one goes: the one with the fewest messages, and of those
// (every full room has -history) the one born last, whose first message
// is the newest (worthLess). So a client that fills the server with rooms
// of its own pushes out its own rooms, not those people have used for
// longer, nor any full room that was there before; and general, the
// page's room, is never forgotten. srv.mu is held.
func (srv *server) forgetIdle(r *room) {
	if len(r.members) > 0 || r.writing > 0 { // (post publishes into r once written)
		return
	}
	if len(r.history) == 0 {
		delete(srv.rooms, r.name)
		return
	}
	srv.idle[r] = struct{}{}
	srv.idleCap = max(srv.cfg.MaxIdleRooms, min(srv.idleCap, len(srv.idle)))
	if len(srv.idle) <= srv.idleCap {
		return
	}
	var gone *room
	for o := range srv.idle {
		if o.writing > 0 || o.name == defaultRoomName { // (a message on its way into a room would be lost with it)
			continue
		}
		if gone == nil || worthLess(o, gone) {
			gone = o
		}
	}
	if gone != nil { // else the next room to go idle tries again
		delete(srv.idle, gone)
		delete(srv.rooms, gone.name)
	}
}

// worthLess reports whether idle room a is worth less keeping than b: it has
// fewer messages, or as many and was born later.
func worthLess(a, b *room) bool {
	if len(a.history) != len(b.history) {
		return len(a.history) < len(b.history)
	}
	return a.born > b.born
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
