// The plain HTTP part of the chat (PROTOCOL.md section 6, "Plain HTTP"):
// the page, a form that posts a message without JavaScript, and the history
// as JSON. This is the first step of the story: request, response, done.
package main

import (
	"crypto/rand"
	"crypto/sha256"
	_ "embed"
	"encoding/base64"
	"html/template"
	"net/http"
	"strconv"
	"time"
)

//go:embed index.html
var indexHTML string

// page is index.html, rendered with the latest messages of general so that
// it reads with JavaScript turned off. clock writes a message's time for
// that JavaScript-free reader, in UTC and saying so: only the browser knows
// the reader's time zone. The page's script rewrites the text of every
// <time datetime> in the reader's zone and language, the same way for
// these messages as for live ones.
// html/template leaves out the comments of index.html as it renders it:
// they are for the reader of the source, not sent with every page.
var page = template.Must(template.New("index.html").Funcs(template.FuncMap{
	"clock": func(ts string) string {
		t, err := time.Parse(time.RFC3339, ts)
		if err != nil {
			return ts
		}
		return t.Format("2 Jan 15:04 UTC")
	},
}).Parse(indexHTML))

// pageMessages is how many messages of general the page shows.
const pageMessages = 50

// pollSlack is how much longer than -poll-timeout the page waits for a
// long-poll GET before it takes the server for gone and reconnects. It is
// longer than answerWait, so the server gives up on a GET first.
const pollSlack = answerWait + 5*time.Second

// pageCSP is the page's Content-Security-Policy: nothing from other origins,
// no inline event handlers, and only the inline <script> and <style> that
// carry this response's nonce. A message that smuggles in markup could not
// run a script even if it were ever written into the page as HTML (it never
// is: the template escapes it and the client uses textContent). 'self' in
// connect-src covers ws: and wss: to this host.
func pageCSP(nonce string) string {
	return "default-src 'none'; script-src 'nonce-" + nonce + "'; style-src 'nonce-" + nonce + "'; " +
		"connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
}

// servePage renders the chat page with a fresh nonce.
func (srv *server) servePage(w http.ResponseWriter, r *http.Request) {
	srv.mu.Lock()
	var messages []message
	if g := srv.rooms[defaultRoomName]; g != nil {
		for _, e := range g.history[max(0, len(g.history)-pageMessages):] {
			messages = append(messages, e.message)
		}
	}
	srv.mu.Unlock()

	// A nonce (128 random bits) is new for every response, so a page
	// cannot be cached.
	// The page is rendered straight into the response, not into a buffer
	// first: a client that asks and never reads holds no copy of it.
	nonce := rand.Text()
	htmlHeaders(w, pageCSP(nonce))
	w.Header().Set("Cache-Control", "no-store")
	http.NewResponseController(w).SetWriteDeadline(time.Now().Add(plainWriteWait))
	if err := page.Execute(w, struct {
		Nonce    string
		CID      string // the form's message: sent twice, stored once
		Messages []message
		PollWait int64 // ms the page gives a long-poll GET before it gives up on the server
	}{nonce, rand.Text(), messages, (srv.cfg.PollTimeout + pollSlack).Milliseconds()}); err != nil {
		srv.log.Warn("page", "err", err)
	}
}

// htmlHeaders sets the headers of every HTML answer. The referrer policy
// is same-origin, not no-referrer: under no-referrer a browser sends
// "Origin: null" with the page's own form post, which crossSite must refuse.
func htmlHeaders(w http.ResponseWriter, csp string) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Security-Policy", csp)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "same-origin")
}

// plainStyle is the whole stylesheet of the small pages (about, form
// errors). They never change, so their inline style is allowed by its hash
// instead of a nonce, and they need no script at all.
const plainStyle = `body { font: 1rem/1.5 system-ui, sans-serif; max-width: 40rem; margin: 2rem auto; padding: 0 1rem; }`

var plainCSP = func() string {
	sum := sha256.Sum256([]byte(plainStyle))
	return "default-src 'none'; style-src 'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'; " +
		"base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
}()

// aboutPage says what the server is and where its protocol is written down.
const aboutPage = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark"><title>About this chat</title><style>` + plainStyle + `</style></head>
<body><h1>About this chat</h1>
<p>A small real-time chat server written in Go, with one dependency:
github.com/coder/websocket. Room history is kept in memory, or on disk
when the server is started with <code>-data</code>.</p>
<p>It speaks two transports, carrying the same events and the same sessions:</p>
<ul>
<li><strong>WebSocket</strong> at <code>GET /ws</code>, tried first;</li>
<li><strong>long-polling</strong> at <code>/poll</code> over plain HTTP, for networks
where WebSockets are blocked (the page falls back to it by itself; add
<code>?transport=polling</code> to the page's address to force it).</li>
</ul>
<p>The page's status says <em>Connected</em> on a WebSocket and <em>Connected
(slower connection mode)</em> on long-polling; its tooltip names the transport.</p>
<p>Without JavaScript, the page shows the latest messages and its form posts to
<code>POST /send_message</code>; <code>GET /messages?room=general</code> gives a
room's history as JSON.</p>
<p>The wire protocol (events, acknowledgements, resuming a session, limits) is
documented in <code>PROTOCOL.md</code>, in the server's source repository.</p>
<p><a href="/">Back to the chat</a></p>
</body></html>
`

// serveAbout serves a short page about the server.
func (srv *server) serveAbout(w http.ResponseWriter, r *http.Request) {
	htmlHeaders(w, plainCSP)
	w.Write([]byte(aboutPage))
}

var formError = template.Must(template.New("formError").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark"><title>Message not sent</title><style>` + plainStyle + `</style></head>
<body><h1>Message not sent</h1><p>{{.}}</p><p><a href="/">Back to the chat</a></p></body></html>
`))

// serveSendForm takes the page's no-JavaScript form (fields username and
// message): it stores the message in general like send_message, then
// redirects back to the page (303, so a reload does not post it again).
// No session is made, and nobody may speak as a live user.
func (srv *server) serveSendForm(w http.ResponseWriter, r *http.Request) {
	refuse := func(status int, why string) {
		htmlHeaders(w, plainCSP)
		w.WriteHeader(status)
		formError.Execute(w, why)
	}
	if srv.crossSite(r) {
		refuse(http.StatusForbidden, "This form can only be sent from this chat's own page.")
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxPollBody)
	if err := r.ParseForm(); err != nil {
		refuse(http.StatusBadRequest, "The form could not be read.")
		return
	}
	name, err := validUsername(r.PostForm.Get("username"))
	if err != nil {
		refuse(http.StatusBadRequest, "That username is not valid: "+toChatError(err).Message+".")
		return
	}
	text := r.PostForm.Get("message")
	if err := validText(text); err != nil {
		refuse(http.StatusBadRequest, "A message is 1 to 2000 characters.")
		return
	}
	cid := r.PostForm.Get("cid") // made by the server with the page: a form sent twice is stored once
	if err := validCID(cid); err != nil {
		refuse(http.StatusBadRequest, "The form could not be read.")
		return
	}

	srv.mu.Lock()
	if srv.names[foldName(name)] != nil {
		srv.mu.Unlock()
		refuse(http.StatusBadRequest, "Someone online is using that username right now: choose another.")
		return
	}
	b := srv.formBucket(srv.clientAddress(r))
	if !b.take(srv.cfg.Rate, srv.cfg.Burst, time.Now()) {
		srv.mu.Unlock()
		refuse(http.StatusTooManyRequests, "Too many messages: wait a moment and try again.")
		return
	}
	_, _, err = srv.post(srv.room(defaultRoomName), name, text, cid) // sent twice: stored once
	srv.mu.Unlock()
	if err != nil {
		refuse(http.StatusServiceUnavailable, "The message could not be stored: try again in a moment.")
		return
	}

	http.Redirect(w, r, "/", http.StatusSeeOther)
}

// formBucket returns the rate bucket of one client address: the form has no
// session to keep it in. Full buckets are forgotten when there are many.
// srv.mu is held.
func (srv *server) formBucket(ip string) *bucket {
	now := time.Now()
	if len(srv.formRate) >= 1024 {
		for k, b := range srv.formRate {
			if b.full(srv.cfg.Rate, srv.cfg.Burst, now) {
				delete(srv.formRate, k)
			}
		}
	}
	b := srv.formRate[ip]
	if b == nil {
		b = &bucket{tokens: float64(srv.cfg.Burst), at: now}
		srv.formRate[ip] = b
	}
	return b
}

// serveMessages answers GET /messages?room=R&since=ID with the room's stored
// messages after id since, as a JSON array. It sends the room's shared
// encoding of its history (historyList): a client that asks for a full
// room and never reads holds no copy of it.
func (srv *server) serveMessages(w http.ResponseWriter, r *http.Request) {
	name := r.URL.Query().Get("room")
	if name == "" {
		name = defaultRoomName
	}
	if err := validRoom(name); err != nil {
		writeError(w, http.StatusBadRequest, toChatError(err))
		return
	}
	since, err := parseSeq(r.URL.Query().Get("since")) // a message id, parsed like a seq
	if err != nil {
		writeError(w, http.StatusBadRequest, badRequest("since must be a message id"))
		return
	}
	var parts [][]byte
	srv.mu.Lock()
	if rm := srv.rooms[name]; rm != nil {
		parts = rm.shared.since(rm.history, since)
	}
	srv.mu.Unlock()

	size := 2
	for _, p := range parts {
		size += len(p)
	}
	jsonHeaders(w)
	w.Header().Set("Content-Length", strconv.Itoa(size))
	http.NewResponseController(w).SetWriteDeadline(time.Now().Add(plainWriteWait))
	w.Write([]byte("["))
	for _, p := range parts {
		w.Write(p)
	}
	w.Write([]byte("]"))
}
