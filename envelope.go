// The envelope (PROTOCOL.md section 1): how a client's message becomes
// events, and what a malformed one gets.
//
// A WebSocket message or a long-poll body holds one JSON envelope,
// {"event": name, "data": {...}, "ack": n}, or an array of them.
// splitEnvelopes cuts a message into its envelopes, and decodeEnvelope
// checks one; handle (events.go) applies it. Nothing a client sends closes
// its connection: a bad envelope is answered with bad_request (by its ack
// number, where it has a readable one), and the others are still applied.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
)

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

// toChatError returns err as the chatError a client reads: err itself when
// it is one, else bad_request.
func toChatError(err error) *chatError {
	var ce *chatError
	if errors.As(err, &ce) {
		return ce
	}
	return badRequest("%v", err)
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
