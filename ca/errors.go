package ca

import "errors"

// Sentinel errors. Every error returned by this package that describes a
// certificate problem wraps exactly one of them; test with errors.Is. The
// wrapping error names the certificate or file and says what to do.
var (
	// ErrExists means Save would overwrite an existing CA key or certificate.
	ErrExists = errors.New("CA already exists")

	// ErrKeyMismatch means a private key does not belong to the certificate
	// it was loaded with.
	ErrKeyMismatch = errors.New("private key does not match certificate")

	// ErrNotCA means a certificate loaded as the CA is not a CA certificate.
	ErrNotCA = errors.New("not a CA certificate")

	// ErrInvalidPEM means a file holds no usable PEM certificate or key.
	ErrInvalidPEM = errors.New("invalid PEM")

	// ErrInvalidRequest means an issuance request or argument is unusable,
	// for example a missing common name or usage.
	ErrInvalidRequest = errors.New("invalid certificate request")

	// ErrExpired means a certificate (or the CA that signed it) is past its
	// NotAfter date.
	ErrExpired = errors.New("certificate expired")

	// ErrNotYetValid means a certificate (or the CA that signed it) is before
	// its NotBefore date, usually because of clock skew between hosts.
	ErrNotYetValid = errors.New("certificate not yet valid")

	// ErrUnknownAuthority means a certificate does not chain to any CA in the
	// trusted pool: it was issued by another CA.
	ErrUnknownAuthority = errors.New("certificate not signed by the mesh CA")

	// ErrWrongUsage means a certificate lacks the extended key usage it is
	// used for: a client certificate used by a server, or the reverse.
	ErrWrongUsage = errors.New("certificate has the wrong usage")

	// ErrRejected means chain verification failed for any other reason; the
	// message carries the x509 detail.
	ErrRejected = errors.New("certificate rejected")
)

// What to do, shared by the messages above so the CLI wording stays in one
// place.
const (
	hintReissue       = "issue a new one with `clustermesh ca issue`"
	hintClock         = "check the clock on this host and on the host that issued it, or wait until then"
	hintNewCA         = "create a new mesh CA and reissue the certificates it signed"
	hintOtherCA       = "issue it from the mesh CA in use, or connect with the peer's CA"
	hintIssueClient   = "issue it with `clustermesh ca issue --client`"
	hintIssueServer   = "issue it with `clustermesh ca issue --server`"
	hintSaveElsewhere = "use a new --out directory or remove it"
)
