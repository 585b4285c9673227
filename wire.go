// Every byte the server sends, encoded in one place (PROTOCOL.md sections
// 1-3).
//
// Each event a session is told carries a seq, its number in that session:
//
//	{"event":"new_message","data":{"id":1764612000000001,"room":"general",…},"seq":42}
//
// The client keeps the highest seq it has processed and, after a dropped
// connection, asks for what comes after it (session.go). But a broadcast
// goes to many sessions, each with its own seq: so an event is encoded once,
// without its number, ending just before it:
//
//	{"event":"new_message","data":{…},"seq":
//
// and those same bytes go into every member's outbox. Each transport adds
// its session's number and the closing brace as it sends (outEvent.append).
// Several events waiting together go out as one JSON array.
//
// The one event without a seq is welcome, the first of every WebSocket and
// the answer to the POST that opens a long-poll session.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"strconv"
)

// outEvent is one event in an outbox: its seq, and the envelope without
// its seq, `{"event":…,"data":…,"seq":`, in up to three parts. For most
// events body is all of it. room_joined (and join_room's ack) carries a
// room's history and users list, which many outboxes share instead of each
// keeping a copy: body is the joiner's own start, list the messages' JSON,
// comma-separated, and tail the users list and the end (encodeJoined).
type outEvent struct {
	seq  int64
	body []byte
	list [][]byte
	tail []byte
}

// size is how many bytes the event takes to send, less its seq.
func (e outEvent) size() int {
	n := len(e.body) + len(e.tail)
	for _, part := range e.list {
		n += len(part)
	}
	return n
}

// append appends the whole envelope to buf: its parts, the seq and `}`.
func (e outEvent) append(buf []byte) []byte {
	buf = append(buf, e.body...)
	for _, part := range e.list {
		buf = append(buf, part...)
	}
	buf = append(buf, e.tail...)
	buf = strconv.AppendInt(buf, e.seq, 10)
	return append(buf, '}')
}

// appendEvents appends events to buf as one JSON value: the envelope alone
// where there is one and array is false, else a JSON array of them. It is
// the path of almost every write, and allocates nothing.
func appendEvents(buf []byte, events []outEvent, array bool) []byte {
	array = array || len(events) != 1
	if array {
		buf = append(buf, '[')
	}
	for i, e := range events {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = e.append(buf)
	}
	if array {
		buf = append(buf, ']')
	}
	return buf
}

// writeEvents writes to w what appendEvents appends, part by part, and
// returns how many bytes that was: the parts go from the outbox itself (a
// room's history is one part per message), so a client that does not read
// holds up the write, but no copy of the answer. w should be buffered: the
// seq and the commas are parts of a few bytes.
func writeEvents(w io.Writer, events []outEvent, array bool) (int, error) {
	n := 0
	var err error
	put := func(b []byte) {
		if err == nil {
			var k int
			k, err = w.Write(b)
			n += k
		}
	}
	array = array || len(events) != 1
	if array {
		put(openBracket)
	}
	var seq [24]byte
	for i, e := range events {
		if i > 0 {
			put(comma)
		}
		put(e.body)
		for _, part := range e.list {
			put(part)
		}
		put(e.tail)
		put(append(strconv.AppendInt(seq[:0], e.seq, 10), '}'))
	}
	if array {
		put(closeBracket)
	}
	return n, err
}

var openBracket, closeBracket = []byte("["), []byte("]")

// encodeEvent encodes an event without its seq: `{"event":…,"data":…,"seq":`.
func encodeEvent(event string, data any) []byte {
	return encode(`{"event":"`+event+`","data":`, data, `,"seq":`)
}

// encodeEncoded is encodeEvent for data already encoded (a message, kept
// encoded in its room's history): `{"event":…,"data":…,"seq":`.
func encodeEncoded(event string, data []byte) []byte {
	return concat(`{"event":"`+event+`","data":`, data, `,"seq":`)
}

// encodeAck encodes an ack without its seq:
// `{"event":"ack","ack":7,"data":{"ok":true,…},"seq":`.
func encodeAck(ack int64, data ackData) []byte {
	return encode(`{"event":"ack","ack":`+strconv.FormatInt(ack, 10)+`,"data":`, data, `,"seq":`)
}

// encode returns head, v as JSON, and tail (concat). Text is not
// HTML-escaped (json.Marshal would make each '<' six bytes): it is data, and
// the page shows it with textContent.
func encode(head string, v any, tail string) []byte {
	scratch := encodeBuffers.get()
	buf := bytes.NewBuffer(*scratch)
	enc := json.NewEncoder(buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		panic(err) // our own types always encode
	}
	js := bytes.TrimSuffix(buf.Bytes(), []byte("\n")) // Encode ends with a newline
	b := concat(head, js, tail)
	*scratch = buf.Bytes() // (grown, maybe)
	encodeBuffers.put(scratch)
	return b
}

// encodeJoined encodes an event that carries the fields of room_joined
// (room_joined itself, and join_room's ack): head, then those fields, in
// three parts. The joiner's own is the start; the history's messages and
// the users list are the room's, encoded once and shared by every joiner
// (historyList and usersList in speed.go):
//
//	{"event":"room_joined","data":{"room":"general","count":2,"history":[
//	{"id":…,"text":"hi",…} , {"id":…}
//	],"users":["alice","bob"]},"seq":
//
// (Room names need no escaping in JSON: letters, digits, '-', '_', '.'.)
func encodeJoined(head string, j *roomJoined) outEvent {
	head += `"room":"` + j.room.name + `","count":` + strconv.Itoa(j.count) + `,"history":[`
	return outEvent{body: []byte(head), list: j.history, tail: j.room.users.encoded(j.room.members)}
}

// encodeAnswer encodes the answer to an event: an ack when the client gave
// an ack number, else an error event (only when err is set). A join's ack
// carries the fields of room_joined, in parts like room_joined itself
// (encodeJoined); every other answer is one part.
func encodeAnswer(event string, ack int64, result ackData, err error) outEvent {
	var ce *chatError
	if err != nil {
		ce = toChatError(err)
	}
	if ack == 0 {
		return outEvent{body: encodeEvent("error", struct {
			*chatError
			Event string `json:"event,omitempty"`
		}{ce, event})}
	}
	if ce != nil {
		result = ackData{Error: ce}
	} else {
		result.OK = true
	}
	if j := result.roomJoined; j != nil {
		return encodeJoined(`{"event":"ack","ack":`+strconv.FormatInt(ack, 10)+`,"data":{"ok":true,`, j)
	}
	return outEvent{body: encodeAck(ack, result)}
}

// concat returns head, b and tail in a new slice of just that size: an
// event may stay in outboxes for long, so it keeps no spare capacity.
func concat(head string, b []byte, tail string) []byte {
	out := make([]byte, 0, len(head)+len(b)+len(tail))
	return append(append(append(out, head...), b...), tail...)
}

// encodeWelcome encodes the welcome event of session s, the only event
// without a seq: {"event":"welcome","data":{"sid":…,"username":…,"resumed":…}}.
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

// parseSeq parses an `after` cursor (a WebSocket's resume, a long-poll GET,
// the page's since); empty is 0.
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
