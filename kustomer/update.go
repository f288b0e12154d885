package kustomer

import (
	"encoding/json"
	"errors"
)

// Update is one "update this conversation" message: the three arguments of the original
// script. The JSON form is {"id": "...", "replace": false, "body": {...}}.
type Update struct {
	ID      string          `json:"id"`
	Replace bool            `json:"replace,omitempty"`
	Body    json.RawMessage `json:"body"`
}

// FieldError is one problem with one field, e.g. Field "body.priority", Problem "7 is not an integer from 1 to 5".
type FieldError struct {
	Field   string
	Problem string
}

func (e FieldError) Error() string { return e.Field + ": " + e.Problem }

// ValidationError lists every problem found in a message. It matches ErrInvalid.
type ValidationError struct {
	Problems []FieldError
}

func (e *ValidationError) Is(target error) bool { return target == ErrInvalid }

// STUBS below: replaced by the real implementation.

func (e *ValidationError) Error() string { return "invalid" }

// Decode parses and validates one message. Errors are *ValidationError.
func Decode(data []byte) (Update, error) { return Update{}, errors.New("unimplemented") }
