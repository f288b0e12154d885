package kustomertest

import (
	"encoding/json"
	"net/http"
)

// The /_mock endpoints let a test read the fake's state over HTTP when the fake runs in
// another process or container. They need no authentication and are not counted in Stats.

// serveStats answers GET /_mock/stats with Stats as JSON.
func (s *Server) serveStats(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.Stats())
}

// serveRequests answers GET /_mock/requests[?id=...] with a JSON array of Request.
func (s *Server) serveRequests(w http.ResponseWriter, r *http.Request) {
	var reqs []Request
	if id := r.URL.Query().Get("id"); id != "" {
		reqs = s.RequestsFor(id)
	} else {
		reqs = s.Requests()
	}
	writeJSON(w, http.StatusOK, reqs)
}

// serveConversation answers GET /_mock/conversations/{id} with a Conversation, or 404.
func (s *Server) serveConversation(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	c, ok := s.Conversation(id)
	if !ok {
		writeJSON(w, http.StatusNotFound, json.RawMessage(jsonAPIErrorBody(http.StatusNotFound, "not_found", "conversation "+id+" not found")))
		return
	}
	writeJSON(w, http.StatusOK, c)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", contentJSON)
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

// serveBulkJobs answers GET /_mock/bulk with every BulkJob as a JSON array.
func (s *Server) serveBulkJobs(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.BulkJobs())
}

// serveBulkJob answers GET /_mock/bulk/{id} with a BulkJob, or 404.
func (s *Server) serveBulkJob(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	j, ok := s.BulkJob(id)
	if !ok {
		writeJSON(w, http.StatusNotFound, json.RawMessage(jsonAPIErrorBody(http.StatusNotFound, "not_found", "bulk job "+id+" not found")))
		return
	}
	writeJSON(w, http.StatusOK, j)
}
