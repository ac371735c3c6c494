package chat

import (
	"errors"
	"fmt"
	"strings"
)

// RenderGemma3 renders r in Gemma 3's chat format, as its official Jinja
// template (google/gemma-3-*-it) does:
//
//	<bos><start_of_turn>user\n{system}\n\n{user}<end_of_turn>\n
//	<start_of_turn>model\n{answer}<end_of_turn>\n
//	<start_of_turn>model\n                          (generation prompt)
//
// A leading system message is folded into the first turn (its text, not
// trimmed, followed by a blank line); "assistant" is renamed "model";
// message text is trimmed; image parts become <start_of_image>. Like the
// template, it fails unless the roles after the system message alternate
// user, assistant, user, ..., and on content that is neither a string nor
// a list. Tools and thinking are not part of Gemma 3's format and must not
// be set.
func RenderGemma3(r *Request) (string, error) {
	if len(r.Messages) == 0 {
		return "", errors.New("chat: no messages")
	}
	if len(r.Tools) > 0 {
		return "", errors.New("chat: the Gemma 3 format has no tool declarations")
	}
	if r.EnableThinking {
		return "", errors.New("chat: the Gemma 3 format has no thinking mode")
	}
	var b strings.Builder
	b.WriteString(bos)
	msgs := r.Messages
	prefix := ""
	if first := msgs[0]; first.Role == "system" {
		switch first.Content.kind {
		case contentText:
			prefix = first.Content.text + "\n\n"
		case contentParts:
			if len(first.Content.parts) == 0 {
				return "", errors.New("chat: messages[0]: empty system content")
			}
			prefix = first.Content.parts[0].Text + "\n\n"
		default:
			return "", errors.New("chat: messages[0]: system message without content")
		}
		msgs = msgs[1:]
	}
	off := len(r.Messages) - len(msgs)
	for i, m := range msgs {
		if (m.Role == "user") != (i%2 == 0) {
			return "", fmt.Errorf("chat: messages[%d] has role %q: conversation roles must alternate user/assistant/user/assistant/...", i+off, m.Role)
		}
		role := m.Role
		if role == "assistant" {
			role = "model"
		}
		b.WriteString("<start_of_turn>" + role + "\n")
		if i == 0 {
			b.WriteString(prefix)
		}
		switch m.Content.kind {
		case contentText:
			b.WriteString(pyStrip(m.Content.text))
		case contentParts:
			for _, p := range m.Content.parts {
				switch p.Type {
				case "image":
					b.WriteString("<start_of_image>")
				case "text":
					b.WriteString(pyStrip(p.Text))
				}
			}
		default:
			return "", fmt.Errorf("chat: messages[%d]: invalid content type (want a string or a list of parts)", i+off)
		}
		b.WriteString("<end_of_turn>\n")
	}
	if r.AddGenerationPrompt {
		b.WriteString("<start_of_turn>model\n")
	}
	return b.String(), nil
}
