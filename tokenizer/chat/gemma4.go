package chat

import (
	"errors"
	"fmt"
	"strings"
)

// Gemma 4 control tokens.
const (
	bos          = "<bos>"
	turnOpen     = "<|turn>"
	turnClose    = "<turn|>"
	quote        = `<|"|>`
	thinkToken   = "<|think|>"
	channelOpen  = "<|channel>"
	channelClose = "<channel|>"
)

// RenderGemma4 renders r in Gemma 4's chat format, byte-identical to the
// official Jinja template (the one released with google/gemma-4-26B-A4B-it)
// as transformers applies it:
//
//	<bos><|turn>system\n[<|think|>][system prompt][<|tool>declaration:...<tool|>]<turn|>\n
//	<|turn>user\n...<turn|>\n<|turn>model\n...<turn|>\n
//	<|turn>model\n<|channel>thought\n<channel|>      (generation prompt, thinking off)
//
// The system turn appears when thinking is enabled, tools are given, or the
// first message has role "system" or "developer". Earlier model turns lose
// their <|channel>...<channel|> thinking. Tool calls render as
// <|tool_call>call:name{key:value,...}<tool_call|>, tool responses as
// <|tool_response>response:name{...}<tool_response|>; after a tool
// response the generation prompt does not open a new model turn. Object
// keys are sorted as Jinja's dictsort does, strings are quoted with <|"|>.
//
// One deliberate difference: the template renders a list-valued system
// prompt as Python's repr of the list; here its text parts are trimmed and
// joined with a space after each (what later revisions of the template do).
func RenderGemma4(r *Request) (string, error) {
	if len(r.Messages) == 0 {
		return "", errors.New("chat: no messages")
	}
	var b strings.Builder
	prev := "" // the template's ns.prev_message_type
	msgs := r.Messages
	b.WriteString(bos)
	first := r.Messages[0]
	firstIsSystem := first.Role == "system" || first.Role == "developer"
	if r.EnableThinking || len(r.Tools) > 0 || firstIsSystem {
		b.WriteString(turnOpen + "system\n")
		if r.EnableThinking {
			b.WriteString(thinkToken)
			prev = "think"
		}
		if firstIsSystem {
			if s, ok := first.Content.IsText(); ok {
				b.WriteString(pyStrip(s))
			} else {
				for _, p := range first.Content.parts {
					b.WriteString(pyStrip(p.Text) + " ")
				}
			}
			msgs = msgs[1:]
		}
		for i, t := range r.Tools {
			decl, err := functionDeclaration(&t)
			if err != nil {
				return "", fmt.Errorf("chat: tools[%d] (%s): %w", i, t.Function.Name, err)
			}
			b.WriteString("<|tool>" + pyStrip(decl) + "<tool|>")
			prev = "tool"
		}
		b.WriteString(turnClose + "\n")
	}
	for i, m := range msgs {
		prev = ""
		role := m.Role
		if role == "assistant" {
			role = "model"
		}
		b.WriteString(turnOpen + role + "\n")
		for j, tc := range m.ToolCalls {
			args, err := parseValue(tc.Function.Arguments)
			if err != nil {
				return "", fmt.Errorf("chat: messages[%d].tool_calls[%d] (%s): arguments: %w", i, j, tc.Function.Name, err)
			}
			b.WriteString("<|tool_call>call:" + tc.Function.Name + "{")
			switch args.kind {
			case kObject:
				for n, k := range args.dictsort() {
					if n > 0 {
						b.WriteByte(',')
					}
					b.WriteString(args.keys[k] + ":")
					formatArgument(&b, args.vals[k], false)
				}
			case kString:
				b.WriteString(args.s)
			}
			b.WriteString("}<tool_call|>")
			prev = "tool_call"
		}
		for j, tr := range m.ToolResponses {
			resp, err := parseValue(tr.Response)
			if err != nil {
				return "", fmt.Errorf("chat: messages[%d].tool_responses[%d] (%s): response: %w", i, j, tr.Name, err)
			}
			name := tr.Name
			if name == "" {
				name = "unknown"
			}
			b.WriteString("<|tool_response>")
			if resp.kind == kObject {
				b.WriteString("response:" + name + "{")
				for n, k := range resp.dictsort() {
					if n > 0 {
						b.WriteByte(',')
					}
					b.WriteString(resp.keys[k] + ":")
					formatArgument(&b, resp.vals[k], false)
				}
				b.WriteString("}")
			} else {
				b.WriteString("response:" + name + "{value:")
				formatArgument(&b, resp, false)
				b.WriteString("}")
			}
			b.WriteString("<tool_response|>")
			prev = "tool_response"
		}
		switch m.Content.kind {
		case contentText:
			if role == "model" {
				b.WriteString(stripThinking(m.Content.text))
			} else {
				b.WriteString(pyStrip(m.Content.text))
			}
		case contentParts:
			for _, p := range m.Content.parts {
				switch p.Type {
				case "text":
					if role == "model" {
						b.WriteString(stripThinking(p.Text))
					} else {
						b.WriteString(pyStrip(p.Text))
					}
				case "image":
					b.WriteString("\n\n<|image|>\n\n")
					prev = "image"
				case "audio":
					b.WriteString("<|audio|>")
					prev = "audio"
				case "video":
					b.WriteString("\n\n<|video|>\n\n")
					prev = "video"
				}
			}
		}
		if !(len(m.ToolResponses) > 0 && !m.Content.truthy()) {
			b.WriteString(turnClose + "\n")
		}
	}
	if r.AddGenerationPrompt {
		if prev != "tool_response" {
			b.WriteString(turnOpen + "model\n")
		}
		if !r.EnableThinking {
			b.WriteString(channelOpen + "thought\n" + channelClose)
		}
	}
	return b.String(), nil
}

// stripThinking removes <|channel>...<channel|> blocks and trims.
func stripThinking(text string) string {
	var b strings.Builder
	for _, part := range strings.Split(text, channelClose) {
		if before, _, found := strings.Cut(part, channelOpen); found {
			b.WriteString(before)
		} else {
			b.WriteString(part)
		}
	}
	return pyStrip(b.String())
}

// formatArgument is the template's format_argument macro.
func formatArgument(b *strings.Builder, v value, escapeKeys bool) {
	switch v.kind {
	case kString:
		b.WriteString(quote + v.s + quote)
	case kBool:
		if v.b {
			b.WriteString("true")
		} else {
			b.WriteString("false")
		}
	case kObject:
		b.WriteByte('{')
		for n, k := range v.dictsort() {
			if n > 0 {
				b.WriteByte(',')
			}
			if escapeKeys {
				b.WriteString(quote + v.keys[k] + quote)
			} else {
				b.WriteString(v.keys[k])
			}
			b.WriteByte(':')
			formatArgument(b, v.vals[k], escapeKeys)
		}
		b.WriteByte('}')
	case kArray:
		b.WriteByte('[')
		for n, e := range v.arr {
			if n > 0 {
				b.WriteByte(',')
			}
			formatArgument(b, e, escapeKeys)
		}
		b.WriteByte(']')
	default:
		b.WriteString(v.str())
	}
}

// functionDeclaration is the template's format_function_declaration macro.
func functionDeclaration(t *Tool) (string, error) {
	params, err := parseValue(t.Function.Parameters)
	if err != nil {
		return "", fmt.Errorf("parameters: %w", err)
	}
	var b strings.Builder
	b.WriteString("declaration:" + t.Function.Name + "{description:" + quote + t.Function.Description + quote)
	if params.truthy() {
		b.WriteString(",parameters:{")
		if props := params.get("properties"); props.truthy() {
			b.WriteString("properties:{")
			formatParameters(&b, props)
			b.WriteString("},")
		}
		if req := params.get("required"); req.truthy() {
			b.WriteString("required:[")
			writeQuotedItems(&b, req)
			b.WriteString("],")
		}
		if typ := params.get("type"); typ.truthy() {
			b.WriteString("type:" + quote + strings.ToUpper(typ.str()) + quote + "}")
		}
	}
	if t.Function.Response != nil {
		resp, err := parseValue(t.Function.Response)
		if err != nil {
			return "", fmt.Errorf("response: %w", err)
		}
		b.WriteString(",response:{")
		if d := resp.get("description"); d.truthy() {
			b.WriteString("description:" + quote + d.str() + quote + ",")
		}
		if typ := strings.ToUpper(resp.get("type").str()); typ == "OBJECT" {
			b.WriteString("type:" + quote + typ + quote + "}")
		}
	}
	b.WriteString("}")
	return b.String(), nil
}

// writeQuotedItems writes the items of a list as <|"|>item<|"|>, comma
// separated (for "required").
func writeQuotedItems(b *strings.Builder, list value) {
	for n, e := range iterate(list) {
		if n > 0 {
			b.WriteByte(',')
		}
		b.WriteString(quote + e.str() + quote)
	}
}

// iterate is what a Jinja for loop visits: list items, object keys, or
// the characters of a string.
func iterate(v value) []value {
	switch v.kind {
	case kArray:
		return v.arr
	case kObject:
		out := make([]value, len(v.keys))
		for i, k := range v.keys {
			out[i] = value{kind: kString, s: k}
		}
		return out
	case kString:
		var out []value
		for _, r := range v.s {
			out = append(out, value{kind: kString, s: string(r)})
		}
		return out
	}
	return nil
}

// standardKeys are the schema keys format_parameters does not treat as
// property names.
var standardKeys = map[string]bool{"description": true, "type": true, "properties": true, "required": true, "nullable": true}

// formatParameters is the template's format_parameters macro.
func formatParameters(b *strings.Builder, props value) {
	if props.kind != kObject {
		return
	}
	found := false
	for _, k := range props.dictsort() {
		key, v := props.keys[k], props.vals[k]
		if standardKeys[key] {
			continue
		}
		if found {
			b.WriteByte(',')
		}
		found = true
		b.WriteString(key + ":{")
		addComma := false
		comma := func() {
			if addComma {
				b.WriteByte(',')
			} else {
				addComma = true
			}
		}
		if d := v.get("description"); d.truthy() {
			b.WriteString("description:" + quote + d.str() + quote)
			addComma = true
		}
		if v.get("nullable").truthy() {
			comma()
			b.WriteString("nullable:true")
		}
		typ := strings.ToUpper(v.get("type").str())
		switch typ {
		case "STRING":
			if e := v.get("enum"); e.truthy() {
				comma()
				b.WriteString("enum:")
				formatArgument(b, e, true)
			}
		case "OBJECT":
			b.WriteString(",properties:{")
			if p := v.get("properties"); p.kind == kObject {
				formatParameters(b, p)
			} else if v.kind == kObject {
				formatParameters(b, v)
			}
			b.WriteString("}")
			if req := v.get("required"); req.truthy() {
				b.WriteString(",required:[")
				writeQuotedItems(b, req)
				b.WriteString("]")
			}
		case "ARRAY":
			if items := v.get("items"); items.kind == kObject && items.truthy() {
				b.WriteString(",items:{")
				foundItem := false
				for _, ik := range items.dictsort() {
					itemKey, itemVal := items.keys[ik], items.vals[ik]
					if itemVal.kind == kNull {
						continue
					}
					if foundItem {
						b.WriteByte(',')
					}
					foundItem = true
					switch itemKey {
					case "properties":
						b.WriteString("properties:{")
						if itemVal.kind == kObject {
							formatParameters(b, itemVal)
						}
						b.WriteString("}")
					case "required":
						b.WriteString("required:[")
						writeQuotedItems(b, itemVal)
						b.WriteString("]")
					case "type":
						b.WriteString("type:")
						if itemVal.kind == kString {
							formatArgument(b, value{kind: kString, s: strings.ToUpper(itemVal.s)}, true)
						} else {
							var up []value
							for _, e := range iterate(itemVal) {
								up = append(up, value{kind: kString, s: strings.ToUpper(e.str())})
							}
							formatArgument(b, value{kind: kArray, arr: up}, true)
						}
					default:
						b.WriteString(itemKey + ":")
						formatArgument(b, itemVal, true)
					}
				}
				b.WriteString("}")
			}
		}
		comma()
		b.WriteString("type:" + quote + typ + quote + "}")
	}
}
