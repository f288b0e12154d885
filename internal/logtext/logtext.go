// Package logtext shapes text bound for logs, terminals and message headers: one UTF-8-safe
// truncation and one marker for redacted secrets, shared by every package of the module.
package logtext

import "unicode/utf8"

// Redacted stands in for a secret (an API key, a password, a token) wherever its value would
// otherwise be printed, logged or stored.
const Redacted = "[redacted]"

// Truncate returns s if it has at most n bytes. Otherwise it returns the longest prefix of s
// that, followed by mark, fits in n bytes, followed by mark: the result never exceeds n bytes
// (unless mark alone does) and never splits a UTF-8 character of s. Use mark "…" to show that
// something was cut, "" for a plain prefix.
func Truncate(s string, n int, mark string) string {
	if len(s) <= n {
		return s
	}
	cut := max(n-len(mark), 0)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + mark
}
