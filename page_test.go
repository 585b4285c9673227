package main

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"
)

// The plain HTTP side of the page (pages.go): GET /, GET /about and the
// form that posts a message without JavaScript. The page's JavaScript is
// tested in a real browser by e2e/.

// pageServer starts a server with cfg changed by edit (startServer, in
// chat_test.go), and closes it when the test ends.
func pageServer(t *testing.T, edit func(*config)) *httptest.Server {
	t.Helper()
	_, ts := startServer(t, edit)
	return ts
}

// pageAnswer is a response, read whole.
type pageAnswer struct {
	status int
	header http.Header
	body   string
}

// pageRequest sends one request and reads the answer, within 5 s. It does
// not follow redirects: the tests look at them. form, if not nil, is the
// url-encoded body.
func pageRequest(t *testing.T, ts *httptest.Server, method, path string, form url.Values, header http.Header) pageAnswer {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequestWithContext(ctx, method, ts.URL+path, body)
	if err != nil {
		t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for k, v := range header {
		req.Header[k] = v
	}
	client := &http.Client{
		Transport:     ts.Client().Transport, // closed with the server
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	res, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the body: %v", method, path, err)
	}
	return pageAnswer{res.StatusCode, res.Header, string(b)}
}

// postMessage posts the page's form, as a browser on the page would.
func postMessage(t *testing.T, ts *httptest.Server, username, text string, header http.Header) pageAnswer {
	t.Helper()
	return pageRequest(t, ts, "POST", "/send_message", url.Values{"username": {username}, "message": {text}}, header)
}

// storedTexts returns the texts of general's history, from GET /messages.
func storedTexts(t *testing.T, ts *httptest.Server) []string {
	t.Helper()
	a := pageRequest(t, ts, "GET", "/messages?room=general", nil, nil)
	var list []message
	if err := json.Unmarshal([]byte(a.body), &list); a.status != http.StatusOK || err != nil {
		t.Fatalf("GET /messages: got %d %q (%v), want 200 and a JSON array", a.status, a.body, err)
	}
	texts := []string{}
	for _, m := range list {
		texts = append(texts, m.Text)
	}
	return texts
}

func wantHTML(t *testing.T, what string, a pageAnswer, status int) {
	t.Helper()
	if a.status != status || !strings.HasPrefix(a.header.Get("Content-Type"), "text/html") {
		t.Errorf("%s: got %d %q, want %d text/html", what, a.status, a.header.Get("Content-Type"), status)
	}
}

func TestPageShowsLatestMessages(t *testing.T) {
	t.Parallel()
	ts := pageServer(t, func(cfg *config) { cfg.Burst = 100 })

	a := pageRequest(t, ts, "GET", "/", nil, nil)
	wantHTML(t, "GET / with no messages", a, http.StatusOK)
	if !strings.Contains(a.body, "No messages yet.") {
		t.Errorf("GET / with no messages: got %q, want it to say so", a.body)
	}

	attack := `<script>alert("hi")</script> & <img src=x onerror=alert(1)>`
	if a := postMessage(t, ts, "mallory", attack, nil); a.status != http.StatusSeeOther {
		t.Fatalf("POST /send_message: got %d, want 303", a.status)
	}
	for i := 1; i <= pageMessages; i++ {
		postMessage(t, ts, "bob", fmt.Sprint("message ", i), nil)
	}
	a = pageRequest(t, ts, "GET", "/", nil, nil)
	wantHTML(t, "GET /", a, http.StatusOK)
	// The attack was pushed out by 50 newer messages: the page shows the
	// latest 50, oldest first.
	if strings.Contains(a.body, "mallory") || !strings.Contains(a.body, ">message 1</p>") ||
		strings.Index(a.body, ">message 1</p>") > strings.Index(a.body, ">message 50</p>") {
		t.Errorf("GET /: want messages 1 to 50 in order and not the older one, got\n%s", a.body)
	}

	postMessage(t, ts, "mallory", attack, nil)
	a = pageRequest(t, ts, "GET", "/", nil, nil)
	escaped := `&lt;script&gt;alert(&#34;hi&#34;)&lt;/script&gt; &amp; &lt;img src=x onerror=alert(1)&gt;`
	if !strings.Contains(a.body, escaped) || strings.Contains(a.body, "<img") || strings.Contains(a.body, `alert("hi")`) {
		t.Errorf("GET /: want the message HTML-escaped (%s), got\n%s", escaped, a.body)
	}
	if !strings.Contains(a.body, `<b class="author">mallory</b>`) {
		t.Errorf("GET /: want the author of the message, got\n%s", a.body)
	}
	if !regexp.MustCompile(`<time datetime="\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z">\d{1,2} [A-Z][a-z]{2} \d\d:\d\d UTC</time>`).MatchString(a.body) {
		t.Errorf("GET /: want each message's time, got\n%s", a.body)
	}
}

func TestPageContentSecurityPolicy(t *testing.T) {
	t.Parallel()
	ts := pageServer(t, nil)
	postMessage(t, ts, "alice", `" onmouseover="alert(1)`, nil)

	nonces := map[string]bool{}
	for range 2 {
		a := pageRequest(t, ts, "GET", "/", nil, nil)
		wantHTML(t, "GET /", a, http.StatusOK)
		csp := a.header.Get("Content-Security-Policy")
		nonce := regexp.MustCompile(`script-src 'nonce-([A-Za-z0-9+/_=-]{16,})'`).FindStringSubmatch(csp)
		if nonce == nil {
			t.Fatalf("CSP: got %q, want script-src with only a nonce", csp)
		}
		nonces[nonce[1]] = true
		for _, want := range []string{"default-src 'none'", "style-src 'nonce-" + nonce[1] + "'", "connect-src 'self'", "base-uri 'none'", "form-action 'self'", "frame-ancestors 'none'"} {
			if !strings.Contains(csp, want) {
				t.Errorf("CSP: got %q, want %q in it", csp, want)
			}
		}
		for _, banned := range []string{"unsafe-inline", "unsafe-eval", "http:", "https:", "*"} {
			if strings.Contains(csp, banned) {
				t.Errorf("CSP: got %q, want no %s", csp, banned)
			}
		}
		// Every script and style carries the nonce; nothing is loaded from elsewhere.
		for _, tag := range regexp.MustCompile(`<(script|style)[^>]*>`).FindAllString(a.body, -1) {
			if !strings.Contains(tag, `nonce="`+nonce[1]+`"`) || strings.Contains(tag, "src=") {
				t.Errorf("GET /: got %s, want an inline tag with the nonce %s", tag, nonce[1])
			}
		}
		// No inline event handlers, no javascript: URLs (the CSP would refuse them).
		markup := regexp.MustCompile(`(?s)<script[^>]*>.*?</script>`).ReplaceAllString(a.body, "<script></script>")
		if handler := regexp.MustCompile(`(?i)<[^>]*\son[a-z]+\s*=`).FindString(markup); handler != "" {
			t.Errorf("GET /: got an inline event handler in %s", handler)
		}
		if strings.Contains(strings.ToLower(markup), "javascript:") {
			t.Errorf("GET /: got a javascript: URL")
		}
		if got := a.header.Get("Cache-Control"); got != "no-store" {
			t.Errorf("GET /: Cache-Control %q, want no-store (the nonce is new every time)", got)
		}
	}
	if len(nonces) != 2 {
		t.Errorf("two GET /: got the nonces %v, want a new one each time", nonces)
	}
}

// The page gives a long-poll GET the server's -poll-timeout and some more
// before it takes the server for gone: a fixed wait shorter than a longer
// -poll-timeout would reconnect every time the server held a GET.
func TestPagePollWaitFollowsPollTimeout(t *testing.T) {
	t.Parallel()
	for _, hold := range []time.Duration{25 * time.Second, time.Minute} {
		ts := pageServer(t, func(c *config) { c.PollTimeout = hold })
		a := pageRequest(t, ts, "GET", "/", nil, nil)
		m := regexp.MustCompile(`const pollWait = +(\d+) `).FindStringSubmatch(a.body)
		if m == nil {
			t.Fatalf("-poll-timeout %v: no pollWait in the page's script", hold)
		}
		if want := fmt.Sprint((hold + pollSlack).Milliseconds()); m[1] != want {
			t.Errorf("-poll-timeout %v: pollWait = %s, want %s", hold, m[1], want)
		}
	}
}

func TestPageAbout(t *testing.T) {
	t.Parallel()
	ts := pageServer(t, nil)
	a := pageRequest(t, ts, "GET", "/about", nil, nil)
	wantHTML(t, "GET /about", a, http.StatusOK)
	for _, want := range []string{"<h1>About this chat</h1>", "WebSocket", "GET /ws", "long-polling", "/poll", "PROTOCOL.md"} {
		if !strings.Contains(a.body, want) {
			t.Errorf("GET /about: want %q in\n%s", want, a.body)
		}
	}
	// Its one inline style is allowed by its hash, and nothing else is.
	style := regexp.MustCompile(`(?s)<style>(.*?)</style>`).FindStringSubmatch(a.body)
	if style == nil {
		t.Fatalf("GET /about: no <style> in\n%s", a.body)
	}
	sum := sha256.Sum256([]byte(style[1]))
	hash := "'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"
	if csp := a.header.Get("Content-Security-Policy"); !strings.Contains(csp, "style-src "+hash) || !strings.Contains(csp, "default-src 'none'") {
		t.Errorf("GET /about: CSP %q, want default-src 'none' and style-src %s", csp, hash)
	}
	if strings.Contains(a.body, "<script") {
		t.Errorf("GET /about: want no script, got\n%s", a.body)
	}
}

func TestPageFormPost(t *testing.T) {
	t.Parallel()
	ts := pageServer(t, nil)
	a := postMessage(t, ts, " curl user ", "posted without JavaScript", nil)
	if a.status != http.StatusSeeOther || a.header.Get("Location") != "/" {
		t.Fatalf("POST /send_message: got %d to %q, want 303 to /", a.status, a.header.Get("Location"))
	}
	if got := storedTexts(t, ts); len(got) != 1 || got[0] != "posted without JavaScript" {
		t.Errorf("GET /messages: got %q, want the message", got)
	}
	if page := pageRequest(t, ts, "GET", "/", nil, nil); !strings.Contains(page.body, `<b class="author">curl user</b>`) {
		t.Errorf("GET /: want the message by %q (trimmed), got\n%s", "curl user", page.body)
	}
	// The browser's own form post: same origin.
	a = postMessage(t, ts, "browser", "from the page", http.Header{"Origin": {ts.URL}, "Sec-Fetch-Site": {"same-origin"}})
	if a.status != http.StatusSeeOther {
		t.Errorf("POST /send_message from the page itself: got %d, want 303", a.status)
	}
}

func TestPageFormCrossSite(t *testing.T) {
	t.Parallel()
	ts := pageServer(t, nil)
	for _, header := range []http.Header{
		{"Origin": {"https://evil.example"}},
		{"Origin": {"null"}},
		{"Sec-Fetch-Site": {"cross-site"}},
	} {
		if a := postMessage(t, ts, "victim", "posted from elsewhere", header); a.status != http.StatusForbidden {
			t.Errorf("POST /send_message with %v: got %d, want 403", header, a.status)
		}
	}
	if got := storedTexts(t, ts); len(got) != 0 {
		t.Errorf("GET /messages: got %q, want nothing stored", got)
	}
}

func TestPageFormRefused(t *testing.T) {
	t.Parallel()
	ts := pageServer(t, nil)
	// A live session holds the name alice.
	if a := pageRequest(t, ts, "POST", "/poll?username=alice", nil, nil); a.status != http.StatusOK || !strings.Contains(a.body, `"username":"alice"`) {
		t.Fatalf("POST /poll?username=alice: got %d %s, want a session named alice", a.status, a.body)
	}
	for _, tc := range []struct {
		name, username, text, want string
	}{
		{"invalid username", "<b>x</b>", "hi", "That username is not valid"},
		{"empty username", " ", "hi", "That username is not valid"},
		{"username held by a live session", "ALICE", "hi", "Someone online is using that username"},
		{"empty message", "bob", "   ", "A message is 1 to 2000 characters"},
		{"message too long", "bob", strings.Repeat("x", 2001), "A message is 1 to 2000 characters"},
	} {
		a := postMessage(t, ts, tc.username, tc.text, nil)
		wantHTML(t, tc.name, a, http.StatusBadRequest)
		if !strings.Contains(a.body, tc.want) || !strings.Contains(a.body, `<a href="/">`) {
			t.Errorf("%s: got %q, want a page that says %q and links back", tc.name, a.body, tc.want)
		}
		if strings.Contains(a.body, "<b>x</b>") {
			t.Errorf("%s: the page repeats the username unescaped: %q", tc.name, a.body)
		}
	}
	if got := storedTexts(t, ts); len(got) != 0 {
		t.Errorf("GET /messages: got %q, want nothing stored", got)
	}
}
