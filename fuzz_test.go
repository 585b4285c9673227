package main

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// FuzzEnvelope feeds arbitrary client messages to a session. Whatever comes
// in, the server must not panic, and everything it sends back must be valid
// JSON with increasing seqs. The seed corpus runs in every go test;
// `go test -fuzz FuzzEnvelope` explores further.
func FuzzEnvelope(f *testing.F) {
	for _, seed := range []string{
		`{"event":"send_message","data":{"text":"hi"},"ack":1}`,
		`[{"event":"join_room","data":{"room":"dev","since":3}},{"event":"typing_start","data":{"room":"dev"}}]`,
		`{"event":"set_username","data":{"username":"bob"},"ack":2}`,
		`{"event":"private_message","data":{"to":"fuzz","text":"x"}}`,
		`{"event":"echo_message","data":[1,{"a":null}],"ack":99999999999}`,
		`{"event":"leave_room","data":{"room":"general"}}`,
		`{"event":"list_rooms"}`,
		`{"event":5,"ack":-1}`, `[]`, `[1,"x",null]`, `{`, `null`, `"str"`, ``,
		`{"event":"send_message","data":"text"}`, `{"event":"zzz","ack":1e3}`,
	} {
		f.Add([]byte(seed))
	}
	srv, s := fuzzSession(f)
	var seen int64
	f.Fuzz(func(t *testing.T, msg []byte) {
		list, bad := splitEnvelopes(msg) // as wsConn.handle does
		if bad != nil {
			list = []json.RawMessage{msg}
		}
		for _, raw := range list {
			srv.handle(s, raw)
		}
		waiting, last := s.waiting(nil, seen, 0)
		out := appendEvents(nil, waiting, true)
		var events []event
		if err := json.Unmarshal(out, &events); err != nil {
			t.Fatalf("the server sent invalid JSON %q: %v", out, err)
		}
		for _, e := range events {
			if seen++; e.Seq != seen || e.Event == "" {
				t.Fatalf("got %s, want seq %d", e, seen)
			}
		}
		if last != seen {
			t.Fatalf("last seq %d, counted %d", last, seen)
		}
		s.markDelivered(nil, last)
	})
}

// FuzzPollBody posts arbitrary bodies to POST /poll?sid=S. Each answer must
// be 204 (applied), 400 (not JSON: nothing applied) or 413, and the session
// must still work afterwards.
func FuzzPollBody(f *testing.F) {
	for _, seed := range []string{
		`{"event":"send_message","data":{"text":"hi"},"ack":1}`,
		`[{"event":"echo_message","data":1},{"event":"typing_start"}]`,
		`[]`, `[1,2,{}]`, `{`, `null`, ``, `  `, `"x"`, `{"event":"join_room","data":{"room":"x"}}`,
		"\xff\xfe", `[{"event":"set_username","data":{"username":"zz"},"ack":3}]`,
	} {
		f.Add([]byte(seed))
	}
	srv, s := fuzzSession(f)
	var seen int64
	f.Fuzz(func(t *testing.T, body []byte) {
		req := httptest.NewRequest("POST", "/poll?sid="+s.sid, strings.NewReader(string(body)))
		rec := httptest.NewRecorder()
		srv.ServeHTTP(rec, req)
		switch rec.Code {
		case http.StatusNoContent:
		case http.StatusBadRequest, http.StatusRequestEntityTooLarge:
			var e struct{ Error struct{ Code string } }
			if json.Unmarshal(rec.Body.Bytes(), &e) != nil || e.Error.Code == "" {
				t.Fatalf("status %d with body %q", rec.Code, rec.Body)
			}
		default:
			t.Fatalf("body %q: status %d", body, rec.Code)
		}
		events, last := s.waiting(nil, seen, 0)
		out := appendEvents(nil, events, true)
		if !json.Valid(out) {
			t.Fatalf("the server queued invalid JSON: %q", out)
		}
		seen = last
		s.markDelivered(nil, last)
	})
}

// fuzzSession starts a server with no rate limit to speak of, and one
// session on it with no transport: the fuzz targets read its outbox.
func fuzzSession(f *testing.F) (*server, *session) {
	cfg := testConfig()
	cfg.Rate, cfg.Burst = 1e9, 1e9
	srv := newServer(cfg)
	f.Cleanup(func() { srv.close(context.Background()) })
	s, err := srv.openSession("fuzz", "127.0.0.1", nil)
	if err != nil {
		f.Fatal(err)
	}
	return srv, s
}
