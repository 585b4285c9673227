package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// TestTLS: -tls-cert and -tls-key serve https (HTTP/2 for the pages) and
// wss, with a certificate made here.
func TestTLS(t *testing.T) {
	t.Parallel()
	certFile, keyFile, pool := makeCertificate(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	base, result, _ := startRun(t, ctx, "-addr", "127.0.0.1:0", "-tls-cert", certFile, "-tls-key", keyFile)
	base = strings.Replace(base, "http://", "https://", 1)

	client := &http.Client{Timeout: waitTimeout, Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: pool},
		ForceAttemptHTTP2: true,
	}}
	defer client.CloseIdleConnections()
	resp, err := client.Get(base + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.ProtoMajor != 2 {
		t.Errorf("GET /healthz over https: got %d over %s, want 200 over HTTP/2", resp.StatusCode, resp.Proto)
	}

	// A WebSocket over TLS (wss) goes over HTTP/1.1.
	dialCtx, cancelDial := context.WithTimeout(context.Background(), waitTimeout)
	defer cancelDial()
	wsClient := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	defer wsClient.CloseIdleConnections()
	conn, _, err := websocket.Dial(dialCtx, "wss"+strings.TrimPrefix(base, "https")+"/ws?username=alice", &websocket.DialOptions{HTTPClient: wsClient})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseNow()
	if _, msg, err := conn.Read(dialCtx); err != nil || !strings.Contains(string(msg), `"welcome"`) {
		t.Errorf("over wss: got %s, %v; want the welcome", msg, err)
	}
	conn.Close(websocket.StatusNormalClosure, "")

	// Plain http on the same port is not served.
	if resp, err := http.Get(strings.Replace(base, "https://", "http://", 1) + "/healthz"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Error("plain http answered 200 on the https port")
		}
	}
	cancel()
	if err := <-result; err != nil {
		t.Errorf("run: %v", err)
	}

	// One of the two flags alone is refused.
	if err := run(context.Background(), []string{"-tls-cert", certFile}, os.Stderr); err == nil {
		t.Error("-tls-cert without -tls-key: want an error")
	}
}

// makeCertificate writes a self-signed certificate for 127.0.0.1 and its
// key, and returns their files and a pool that trusts it.
func makeCertificate(t *testing.T) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "chat test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:         true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}
