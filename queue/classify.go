package queue

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// classify turns an error of nats.Connect into a *ConnectError of the right kind.
func classify(rawURL string, err error) *ConnectError {
	ce := &ConnectError{URL: RedactURLs(rawURL), Kind: ConnectUnreachable, Err: err}
	if errors.Is(err, nats.ErrNoServers) {
		// nats.go reports a refused connection so.
		ce.Err = fmt.Errorf("connection refused: %w", err)
	}
	var (
		verify   *tls.CertificateVerificationError
		unknown  x509.UnknownAuthorityError
		hostname x509.HostnameError
		invalid  x509.CertificateInvalidError
		record   tls.RecordHeaderError
		alert    tls.AlertError
		pathErr  *fs.PathError
		urlErr   *url.Error
	)
	text := strings.ToLower(err.Error())
	switch {
	case errors.Is(err, nats.ErrAuthorization), errors.Is(err, nats.ErrAuthExpired),
		errors.Is(err, nats.ErrAuthRevoked), errors.Is(err, nats.ErrAccountAuthExpired),
		strings.Contains(text, "authorization violation"), strings.Contains(text, "authentication"):
		ce.Kind = ConnectAuth
	case errors.As(err, &verify), errors.As(err, &unknown), errors.As(err, &hostname),
		errors.As(err, &invalid), errors.As(err, &record), errors.As(err, &alert),
		errors.Is(err, nats.ErrSecureConnRequired), errors.Is(err, nats.ErrSecureConnWanted),
		strings.Contains(text, "tls:"), strings.Contains(text, "x509:"):
		ce.Kind = ConnectTLS
	case errors.As(err, &pathErr), strings.Contains(text, "nkey"), strings.Contains(text, "credentials"):
		ce.Kind = ConnectCredentials
	case errors.As(err, &urlErr) && !strings.Contains(text, "dial"):
		ce.Kind = ConnectCredentials // a URL that cannot be parsed: no wait fixes it either
	}
	return ce
}

// CheckJetStream returns a *ConnectError of kind ConnectNoJetStream if the server or the
// account of js has no JetStream; other errors (a timeout) come back as they are. url names
// the server in the error.
func CheckJetStream(ctx context.Context, js jetstream.JetStream, url string) error {
	_, err := js.AccountInfo(ctx)
	if errors.Is(err, jetstream.ErrJetStreamNotEnabled) || errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount) {
		return &ConnectError{URL: RedactURLs(url), Kind: ConnectNoJetStream, Err: err}
	}
	return err
}
