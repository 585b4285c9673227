// The rules of PROTOCOL.md section 7: what a username, a room name and a
// message may be, and how fast a client may send.
//
// Every rule is checked where input arrives (events.go, pages.go), before
// anything changes, so a bad event is answered with a clear error and
// changes nothing. A rule lives here once, whichever transport or page the
// input came through.
package main

import (
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// validUsername trims the name and checks it: 1–24 letters, digits, spaces,
// '-', '_' and '.', and nothing that passes for another name (checkName in
// names.go).
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
	if err := checkName(name); err != nil {
		return "", &chatError{"invalid_username", "this username could pass for another: " + err.Error()}
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

// validText checks a message: 1–2000 characters once spaces are trimmed,
// and valid UTF-8 (a form post is not checked anywhere else). The text is
// stored as given.
func validText(text string) error {
	n := utf8.RuneCountInString(strings.TrimSpace(text))
	if n < 1 || n > maxText || !utf8.ValidString(text) {
		return &chatError{"invalid_message", fmt.Sprintf("a message is 1-%d characters", maxText)}
	}
	return nil
}

// validCID checks a message's cid: empty (none), or 1–64 characters of
// A–Z a–z 0–9 - _. It is the client's own id for the message, random per
// message, so that sending it again stores nothing twice.
func validCID(cid string) error {
	ok := len(cid) <= 64
	for _, c := range []byte(cid) {
		ok = ok && ('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_')
	}
	if !ok {
		return badRequest("cid is 1-64 characters of A-Z, a-z, 0-9, '-' and '_'")
	}
	return nil
}

// bucket is a token bucket, the rate limit of one session (or, for the
// form, of one address): cfg.Rate tokens a second, at most cfg.Burst. A
// client may send a burst, then keeps to the rate.
type bucket struct {
	tokens float64
	at     time.Time
}

// take reports whether one event may pass now.
func (b *bucket) take(rate float64, burst int, now time.Time) bool {
	b.refill(rate, burst, now)
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// full reports whether the bucket is full now: its client has been quiet
// for long enough that forgetting the bucket changes nothing.
func (b *bucket) full(rate float64, burst int, now time.Time) bool {
	b.refill(rate, burst, now)
	return b.tokens >= float64(burst)
}

// refill adds the tokens of the time since the bucket was last looked at.
func (b *bucket) refill(rate float64, burst int, now time.Time) {
	b.tokens = min(float64(burst), b.tokens+now.Sub(b.at).Seconds()*rate)
	b.at = now
}
