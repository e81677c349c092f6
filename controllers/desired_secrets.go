package controllers

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net/url"

	corev1 "k8s.io/api/core/v1"

	tradingv1alpha1 "github.com/findmy/trading-operator/api/v1alpha1"
)

// The generated Secrets are built with fresh random values on every call; the reconciler
// creates one only when it is missing and never writes its data again, so these values are
// used once.

// randomToken returns n bytes from crypto/rand in unpadded URL base64: safe inside a URL's
// userinfo, a shell word and an env var.
func randomToken(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("read random: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

func secretObject(s *tradingv1alpha1.TradingStack, name, app, component string, data map[string]string) *corev1.Secret {
	return &corev1.Secret{
		TypeMeta:   typeMeta("v1", "Secret"),
		ObjectMeta: objectMeta(s, name, app, component),
		Type:       corev1.SecretTypeOpaque,
		Data:       toBytes(data),
	}
}

func toBytes(m map[string]string) map[string][]byte {
	out := make(map[string][]byte, len(m))
	for k, v := range m {
		out[k] = []byte(v)
	}
	return out
}

// newPostgresCredentialsSecret builds NAME-postgres-credentials for a managed database: keys
// "user", "password" (32 random bytes) and "dsn", the DSN the runtime and the migration Job use.
func newPostgresCredentialsSecret(s *tradingv1alpha1.TradingStack) (*corev1.Secret, error) {
	password, err := randomToken(32)
	if err != nil {
		return nil, err
	}
	return secretObject(s, postgresCredentialsSecretName(s), postgresApp, databaseComponent, map[string]string{
		postgresUserKey:     postgresUser,
		postgresPasswordKey: password,
		postgresDSNKey:      postgresDSN(s, postgresUser, password),
	}), nil
}

// postgresDSN is the runtime's DSN of the managed database for user and password.
func postgresDSN(s *tradingv1alpha1.TradingStack, user, password string) string {
	dsn := url.URL{
		Scheme:   "postgres",
		User:     url.UserPassword(user, password),
		Host:     fmt.Sprintf("%s:%d", postgresHost(s), postgresPort),
		Path:     "/" + postgresDB,
		RawQuery: "sslmode=disable",
	}
	return dsn.String()
}

// newJWTSecret builds NAME-jwt: key "keys" holds one JWT_KEYS entry, "kid:base64secret" with a
// random kid and 48 random bytes in standard base64. To rotate, a user prepends a new line
// (the first key signs, all verify); the operator never rewrites it.
func newJWTSecret(s *tradingv1alpha1.TradingStack) (*corev1.Secret, error) {
	kid := make([]byte, 4)
	secret := make([]byte, 48)
	if _, err := rand.Read(kid); err != nil {
		return nil, fmt.Errorf("read random: %w", err)
	}
	if _, err := rand.Read(secret); err != nil {
		return nil, fmt.Errorf("read random: %w", err)
	}
	keys := "k-" + hex.EncodeToString(kid) + ":" + base64.StdEncoding.EncodeToString(secret)
	return secretObject(s, jwtSecretName(s), tradingdApp, authComponent, map[string]string{
		jwtKeysKey: keys,
	}), nil
}

// newAdminSecret builds NAME-admin: key "password", the bootstrap admin's password
// (BOOTSTRAP_ADMIN_PASSWORD; the user is "admin").
func newAdminSecret(s *tradingv1alpha1.TradingStack) (*corev1.Secret, error) {
	password, err := randomToken(24)
	if err != nil {
		return nil, err
	}
	return secretObject(s, adminSecretName(s), tradingdApp, authComponent, map[string]string{
		adminPasswordKey: password,
	}), nil
}
