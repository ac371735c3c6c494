// Package chat renders conversations into the prompt formats of the Gemma
// models, byte for byte as their official Jinja chat templates do when
// transformers' apply_chat_template runs them.
//
// The input types unmarshal from the JSON that apply_chat_template takes
// (OpenAI-style messages and tool schemas):
//
//	{"messages": [{"role": "system", "content": "Be terse."},
//	              {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
//	              {"role": "assistant", "tool_calls": [{"type": "function",
//	                   "function": {"name": "f", "arguments": {"x": 1}}}]},
//	              {"role": "tool", "tool_responses": [{"name": "f", "response": {"y": 2}}]}],
//	 "tools": [{"type": "function", "function": {"name": "f", "description": "...",
//	            "parameters": {"type": "object", "properties": {...}}}}],
//	 "add_generation_prompt": true, "enable_thinking": false}
//
// The rendered prompt is meant to be tokenized whole (special tokens such as
// <|turn> are recognised in the text), without adding another <bos>: the
// rendering starts with it.
package chat

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
)

// Request is a conversation to render, with the template options.
type Request struct {
	// Messages is the conversation, oldest first.
	Messages []Message `json:"messages"`
	// Tools are the function declarations offered to the model (Gemma 4).
	Tools []Tool `json:"tools,omitempty"`
	// AddGenerationPrompt ends the prompt with the opening of a model turn.
	AddGenerationPrompt bool `json:"add_generation_prompt,omitempty"`
	// EnableThinking asks Gemma 4 to think before answering.
	EnableThinking bool `json:"enable_thinking,omitempty"`
}

// Message is one chat message.
type Message struct {
	// Role is "system", "developer", "user", "assistant" (rendered as
	// "model"), "tool", or any other role name, which is rendered as is.
	Role string `json:"role"`
	// Content is the text of the message: a string or a list of parts.
	Content Content `json:"content"`
	// ToolCalls are the function calls of an assistant message.
	ToolCalls []ToolCall `json:"tool_calls,omitempty"`
	// ToolResponses are function results (Gemma 4 renders them in the
	// message that carries them, usually of role "tool").
	ToolResponses []ToolResponse `json:"tool_responses,omitempty"`
	// ToolCallID and Name identify the call an OpenAI-style "tool" message
	// answers. The Gemma templates do not render them.
	ToolCallID string `json:"tool_call_id,omitempty"`
	Name       string `json:"name,omitempty"`
}

// Part is one element of a list-valued Content: {"type": "text", "text":
// ...}, or a media placeholder such as {"type": "image"}.
type Part struct {
	Type string `json:"type"`
	Text string `json:"text,omitempty"`
}

// Content is a message's content: absent, a string, or a list of parts.
// The zero value is absent (JSON null).
type Content struct {
	text  string
	parts []Part
	kind  contentKind
}

type contentKind uint8

const (
	contentNone contentKind = iota
	contentText
	contentParts
)

// Text returns string content.
func Text(s string) Content { return Content{text: s, kind: contentText} }

// Parts returns list content.
func Parts(p ...Part) Content { return Content{parts: append([]Part{}, p...), kind: contentParts} }

// IsText reports whether the content is a string, and returns it.
func (c Content) IsText() (string, bool) { return c.text, c.kind == contentText }

// PartList returns the parts of list content (nil otherwise).
func (c Content) PartList() []Part { return c.parts }

// IsZero reports whether the content is absent.
func (c Content) IsZero() bool { return c.kind == contentNone }

// truthy is the Jinja truth value of the content.
func (c Content) truthy() bool {
	switch c.kind {
	case contentText:
		return c.text != ""
	case contentParts:
		return len(c.parts) > 0
	}
	return false
}

// MarshalJSON encodes the content as a string, a list or null.
func (c Content) MarshalJSON() ([]byte, error) {
	switch c.kind {
	case contentText:
		return json.Marshal(c.text)
	case contentParts:
		return json.Marshal(c.parts)
	}
	return []byte("null"), nil
}

// UnmarshalJSON accepts a string, a list of parts, or null.
func (c *Content) UnmarshalJSON(data []byte) error {
	data = bytes.TrimSpace(data)
	switch {
	case bytes.Equal(data, []byte("null")):
		*c = Content{}
		return nil
	case len(data) > 0 && data[0] == '"':
		var s string
		if err := json.Unmarshal(data, &s); err != nil {
			return err
		}
		*c = Text(s)
		return nil
	case len(data) > 0 && data[0] == '[':
		var p []Part
		if err := json.Unmarshal(data, &p); err != nil {
			return fmt.Errorf("chat: message content: %w", err)
		}
		*c = Content{parts: p, kind: contentParts}
		if p == nil {
			c.parts = []Part{}
		}
		return nil
	}
	return errors.New("chat: message content must be a string, a list of parts or null")
}

// ToolCall is a function call made by the model.
type ToolCall struct {
	ID       string       `json:"id,omitempty"`
	Type     string       `json:"type,omitempty"`
	Function FunctionCall `json:"function"`
}

// FunctionCall names the function and its arguments: a JSON object, or a
// JSON string holding the arguments as text (rendered verbatim).
type FunctionCall struct {
	Name      string          `json:"name"`
	Arguments json.RawMessage `json:"arguments,omitempty"`
}

// ToolResponse is the result of a function call: Response is any JSON
// value (an object is rendered key by key).
type ToolResponse struct {
	Name     string          `json:"name"`
	Response json.RawMessage `json:"response"`
}

// Tool is an OpenAI-style tool declaration, {"type": "function",
// "function": {...}}.
type Tool struct {
	Type     string   `json:"type"`
	Function Function `json:"function"`
}

// Function is a function declaration: Parameters is a JSON schema object;
// Response optionally describes the result.
type Function struct {
	Name        string          `json:"name"`
	Description string          `json:"description,omitempty"`
	Parameters  json.RawMessage `json:"parameters,omitempty"`
	Response    json.RawMessage `json:"response,omitempty"`
}
