package messages

import "strconv"

// MaxNameLength is the longest tenant id or workload name: both end up as
// Kubernetes label values, which are limited to 63 characters.
const MaxNameLength = 63

// ValidateTenantID checks that id is a Kubernetes label value, since it
// becomes the boilerhouse.dev/tenant label on Pods: non-empty, at most 63
// characters from [A-Za-z0-9._-], beginning and ending with a letter or
// digit. It returns an [CodeInvalidArgument] *Error naming the broken rule.
func ValidateTenantID(id string) error {
	return validateName("tenant id", id, func(c byte) bool {
		return isAlnum(c) || c == '.' || c == '_' || c == '-'
	}, "may contain only letters, digits, '.', '_' and '-' ([A-Za-z0-9._-])",
		"must begin and end with a letter or digit (alphanumeric)")
}

// ValidateWorkloadName checks that name is a DNS-1123 label, the rule for
// the name of the BoilerhouseWorkload it refers to: non-empty, at most 63
// characters from [a-z0-9-], beginning and ending with a lowercase letter
// or digit. It returns an [CodeInvalidArgument] *Error naming the broken
// rule.
func ValidateWorkloadName(name string) error {
	return validateName("workload name", name, func(c byte) bool {
		return 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-'
	}, "may contain only lowercase letters, digits and '-' ([a-z0-9-], DNS-1123 label)",
		"must begin and end with a lowercase letter or digit (alphanumeric, DNS-1123 label)")
}

func validateName(what, s string, allowed func(byte) bool, charRule, endRule string) error {
	if s == "" {
		return Errorf(CodeInvalidArgument, "%s must not be empty", what)
	}
	if len(s) > MaxNameLength {
		return Errorf(CodeInvalidArgument, "%s %s is %d characters long, must be at most %d", what, quote(s), len(s), MaxNameLength)
	}
	for i := 0; i < len(s); i++ {
		if !allowed(s[i]) {
			return Errorf(CodeInvalidArgument, "%s %s %s", what, quote(s), charRule)
		}
	}
	if !isAlnum(s[0]) || !isAlnum(s[len(s)-1]) {
		return Errorf(CodeInvalidArgument, "%s %s %s", what, quote(s), endRule)
	}
	return nil
}

func isAlnum(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}

// quote quotes s for an error message, cut short so that a hostile input
// cannot blow up the reply.
func quote(s string) string {
	const max = 80
	if len(s) > max {
		return strconv.Quote(s[:max]) + "..."
	}
	return strconv.Quote(s)
}
