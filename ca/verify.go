package ca

import (
	"crypto/x509"
	"errors"
	"fmt"
	"time"
)

// timeFormat is how dates appear in messages.
const timeFormat = time.RFC3339

// Verify checks that cert is valid at now, chains to a CA in pool, and may
// be used for usage. The error wraps exactly one of ErrExpired,
// ErrNotYetValid, ErrUnknownAuthority, ErrWrongUsage or (for any other chain
// failure) ErrRejected, and says what to do.
func Verify(cert *x509.Certificate, pool *x509.CertPool, usage Usage, now time.Time) error {
	if cert == nil || pool == nil {
		return fmt.Errorf("%w: nil certificate or CA pool", ErrInvalidRequest)
	}
	eku, ok := usage.extKeyUsage()
	if !ok {
		return fmt.Errorf("%w: %q: usage %s: use ServerAuth or ClientAuth", ErrInvalidRequest, name(cert), usage)
	}
	// Dates first, so an expired certificate is reported as expired rather
	// than as a chain error.
	if err := checkDates(cert, now, "", hintReissue); err != nil {
		return err
	}
	_, err := cert.Verify(x509.VerifyOptions{
		Roots:       pool,
		CurrentTime: now,
		KeyUsages:   []x509.ExtKeyUsage{eku},
	})
	if err == nil {
		return nil
	}

	var unknown x509.UnknownAuthorityError
	if errors.As(err, &unknown) {
		return fmt.Errorf("%w: %q was issued by %q, which is not in the trusted CA pool (a CA of the same name with another key does not count): %s",
			ErrUnknownAuthority, name(cert), cert.Issuer.CommonName, hintOtherCA)
	}
	var invalid x509.CertificateInvalidError
	if errors.As(err, &invalid) {
		switch invalid.Reason {
		case x509.IncompatibleUsage:
			hint := hintIssueServer
			if usage == ClientAuth {
				hint = hintIssueClient
			}
			return fmt.Errorf("%w: %q has no %s usage: %s", ErrWrongUsage, name(cert), usage, hint)
		case x509.Expired:
			// The leaf's dates were checked above, so this is the CA.
			if invalid.Cert != nil && invalid.Cert != cert {
				if err := checkDates(invalid.Cert, now, "mesh CA ", hintNewCA); err != nil {
					return err
				}
			}
		}
	}
	return fmt.Errorf("%w: %q: %v: check that it was issued by the mesh CA in use", ErrRejected, name(cert), err)
}

// checkDates reports whether c is outside its validity period at now. role
// ("" or "mesh CA ") prefixes the certificate's name and hint says what to do
// when it expired.
func checkDates(c *x509.Certificate, now time.Time, role, hint string) error {
	if now.Before(c.NotBefore) {
		return fmt.Errorf("%w: %s%q is valid from %s (now %s): %s",
			ErrNotYetValid, role, name(c), c.NotBefore.UTC().Format(timeFormat), now.UTC().Format(timeFormat), hintClock)
	}
	if now.After(c.NotAfter) {
		return fmt.Errorf("%w: %s%q expired at %s (now %s): %s",
			ErrExpired, role, name(c), c.NotAfter.UTC().Format(timeFormat), now.UTC().Format(timeFormat), hint)
	}
	return nil
}
