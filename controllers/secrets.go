package controllers

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	tradingv1alpha1 "github.com/findmy/trading-operator/api/v1alpha1"
)

// reconcileSecrets makes sure the generated Secrets exist. Their data is
// written once, at creation, from crypto/rand; afterwards the operator never
// touches it, so a password a user rotated by hand is kept. Only the metadata
// is applied on every pass: the labels, and the owner reference, which is left
// off when the stack retains its data so that deleting the stack keeps them.
// A Secret of that name that a user made before the stack existed is used as it
// is and never owned (userSecretAnnotation): the operator deletes only what it made.
func (r *TradingStackReconciler) reconcileSecrets(ctx context.Context, p *pass) (bool, error) {
	type generated struct {
		build  func(*tradingv1alpha1.TradingStack) (*corev1.Secret, error)
		record *string
	}
	list := []generated{
		{newJWTSecret, &p.stack.Status.Secrets.JWT},
		{newAdminSecret, &p.stack.Status.Secrets.Admin},
	}
	if !p.spec.ExternalPostgres() {
		list = append([]generated{{newPostgresCredentialsSecret, &p.stack.Status.Secrets.PostgresCredentials}}, list...)
	} else {
		p.stack.Status.Secrets.PostgresCredentials = ""
	}
	// lacking is, per condition, what user-made Secrets lack (userSecretLacks).
	lacking := map[string][]string{}
	for _, g := range list {
		desired, err := g.build(p.spec)
		if err != nil {
			return false, fmt.Errorf("generate secret: %w", err)
		}
		current, userMade, err := r.ensureSecret(ctx, p, desired)
		if err != nil {
			return false, err
		}
		if !userMade {
			if err := r.restoreMissingKeys(ctx, p, desired, current); err != nil {
				return false, err
			}
			// Said, never mended: a user-edited value is kept. A Secret the user made is
			// theirs to judge (its dsn may go through a pooler with other credentials).
			if desired.Name == postgresCredentialsSecretName(p.stack) {
				if keys := dsnMismatch(current); len(keys) > 0 {
					p.warn(tradingv1alpha1.ConditionDatabaseReady, dsnWarning(current, keys), "DSNMismatch", "CheckCredentials")
				}
			}
		}
		// Also for a Secret that lacks keys: its labels bring its next edit to this stack.
		if err := r.applySecretMetadata(ctx, p, desired, current, userMade); err != nil {
			return false, err
		}
		if userMade {
			if cond, msg := userSecretLacks(p.stack, desired, current); msg != "" {
				lacking[cond] = append(lacking[cond], msg)
			}
		}
		*g.record = current.Name
		p.runtimeSecrets = append(p.runtimeSecrets, current)
	}
	// RuntimeAvailable is set by the runtime's step, which a later step may keep from running
	// (an external database's missing Secret): its SecretKeyMissing of an earlier pass, the
	// key now added, is not this step's to keep saying.
	if _, ok := lacking[tradingv1alpha1.ConditionRuntimeAvailable]; !ok {
		if c := meta.FindStatusCondition(p.stack.Status.Conditions, tradingv1alpha1.ConditionRuntimeAvailable); c != nil && c.Reason == tradingv1alpha1.ReasonSecretKeyMissing {
			p.setCondition(tradingv1alpha1.ConditionRuntimeAvailable, metav1.ConditionUnknown, tradingv1alpha1.ReasonNotChecked, "not checked yet")
		}
	}
	if len(lacking) == 0 {
		return false, nil
	}
	// The later steps wait, as for an external database's missing Secret: they would make
	// pods that cannot start (CreateContainerConfigError) while the stack said it waits for
	// them. Only the user can fix it; the Secret's next edit brings the next pass.
	for cond, msgs := range lacking {
		p.setCondition(cond, metav1.ConditionFalse, tradingv1alpha1.ReasonSecretKeyMissing, strings.Join(msgs, "; "))
	}
	return true, nil
}

// userSecretLacks says which keys of desired a Secret the user made with a generated Secret's
// name (used as it is: the operator adds none) lacks or has empty, and the condition of the
// component whose pods read them: "" when it has them all. The message names keys, never
// values.
func userSecretLacks(s *tradingv1alpha1.TradingStack, desired, current *corev1.Secret) (cond, msg string) {
	var missing []string
	for k := range desired.Data {
		v, ok := current.Data[k]
		// An empty admin password is tradingd's "no first admin" (BOOTSTRAP_ADMIN_PASSWORD
		// unset): a choice, not a fault. Only the key's absence stops the pods there.
		if !ok || (len(v) == 0 && desired.Name != adminSecretName(s)) {
			missing = append(missing, k)
		}
	}
	if len(missing) == 0 {
		return "", ""
	}
	slices.Sort(missing)
	cond, who := tradingv1alpha1.ConditionRuntimeAvailable, "the runtime's pods"
	if desired.Name == postgresCredentialsSecretName(s) {
		cond, who = tradingv1alpha1.ConditionDatabaseReady, "the database's pod and the migration Job"
	}
	want := make([]string, 0, len(desired.Data))
	for k := range desired.Data {
		want = append(want, k)
	}
	slices.Sort(want)
	return cond, fmt.Sprintf("Secret %s, made by the user (annotation %s), has no key %s (or it is empty): %s cannot start without it; "+
		"add it (the Secret needs %s), or delete the Secret for the operator to generate one",
		current.Name, userSecretAnnotation, strings.Join(missing, ", "), who, strings.Join(want, ", "))
}

// ensureSecret returns the Secret as it is, creating it from desired when it
// does not exist, and whether a user made it. It never updates existing data.
func (r *TradingStackReconciler) ensureSecret(ctx context.Context, p *pass, desired *corev1.Secret) (*corev1.Secret, bool, error) {
	key := client.ObjectKeyFromObject(desired)
	current := &corev1.Secret{}
	found, err := r.getCached(ctx, key, current)
	if err != nil {
		return nil, false, err
	}
	if found {
		return current, current.Annotations[userSecretAnnotation] != "", nil
	}
	// Created without an owner reference: ownership is the applied metadata's
	// concern, so that it can be removed again when the stack starts retaining.
	create := desired.DeepCopy()
	create.OwnerReferences = nil
	if err := r.Create(ctx, create, client.FieldOwner(FieldOwner)); err != nil {
		if !apierrors.IsAlreadyExists(err) {
			return nil, false, fmt.Errorf("create secret %s: %w", key.Name, err)
		}
		// Created earlier but not in the cache yet, or a user's Secret without
		// the operator's labels: read it from the API server, never replace it.
		if err := r.APIReader.Get(ctx, key, current); err != nil {
			return nil, false, fmt.Errorf("read secret %s: %w", key.Name, err)
		}
		userMade := current.Annotations[userSecretAnnotation] != ""
		// The operator's own, although the cache missed it: owned by the stack, or labelled
		// as this stack's Secret of this kind (retained ones have no owner). A hand edit that
		// removed only the managed-by label must not make it a user's Secret for good.
		ours := isControlledBy(current, p.stack) ||
			(current.Labels[instanceLabel] == p.stack.Name && current.Labels[componentLabel] == desired.Labels[componentLabel])
		if !ours && !userMade {
			userMade = true
			r.Recorder.Eventf(p.stack, current, corev1.EventTypeNormal, "UsingUserSecret", "Adopt",
				"Using Secret %s as it is: it existed before the stack, so the operator neither changes its data nor deletes it", key.Name)
		}
		return current, userMade, nil
	}
	r.Recorder.Eventf(p.stack, create, corev1.EventTypeNormal, "Created", "Create", "Created Secret %s", create.Name)
	return create, false, nil
}

// applySecretMetadata applies only labels, annotations and (unless retained)
// the owner reference: data is left out of the apply, so it is never owned by
// the apply and never changed by it. When the Secret already carries exactly
// that metadata (the usual case right after it was created) nothing is sent.
func (r *TradingStackReconciler) applySecretMetadata(ctx context.Context, p *pass, desired, current *corev1.Secret, userMade bool) error {
	meta := &corev1.Secret{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
		ObjectMeta: metav1.ObjectMeta{
			Name:        desired.Name,
			Namespace:   desired.Namespace,
			Labels:      desired.Labels,
			Annotations: desired.Annotations,
		},
	}
	if userMade {
		// Labelled like the others (so the cache sees it), marked, and never owned.
		meta.Annotations = map[string]string{userSecretAnnotation: "true"}
	}
	if !p.spec.RetainData() && !userMade {
		if err := controllerutil.SetControllerReference(p.stack, meta, r.Scheme); err != nil {
			return err
		}
	}
	if secretMetadataMatches(current, meta) {
		return nil
	}
	return r.applyOwned(ctx, p, meta, false)
}

// secretMetadataMatches reports whether current has every wanted label and
// annotation and exactly the wanted owner references.
func secretMetadataMatches(current, want *corev1.Secret) bool {
	for k, v := range want.Labels {
		if current.Labels[k] != v {
			return false
		}
	}
	for k, v := range want.Annotations {
		if current.Annotations[k] != v {
			return false
		}
	}
	if len(current.OwnerReferences) != len(want.OwnerReferences) {
		return false
	}
	for i, ref := range want.OwnerReferences {
		got := current.OwnerReferences[i]
		if got.UID != ref.UID || got.Kind != ref.Kind || got.Name != ref.Name || (got.Controller == nil) != (ref.Controller == nil) {
			return false
		}
	}
	return true
}

// restoreMissingKeys puts back the keys of a generated Secret that were removed (or emptied) by
// hand, with new values, as a deleted Secret is made again: without them the runtime's pods
// would not start (the Secret's hash changed, so they roll). The values that are there are
// kept, and so is an emptied admin password, which the pods start with (no first admin). In
// NAME-postgres-credentials the DSN follows the user and password it then holds: rebuilt when
// it is missing or when the password is new (the database takes the new password when its
// pod restarts, as after an edit of it).
//
// The patch carries the resourceVersion read: a Secret from a cache that has not seen a key
// put back yet (by the user, or by the previous pass) must not have it overwritten with a new
// password. On a conflict the Secret is read from the API server and judged again, once.
func (r *TradingStackReconciler) restoreMissingKeys(ctx context.Context, p *pass, desired, current *corev1.Secret) error {
	err := r.restoreMissingKeysOnce(ctx, p, desired, current)
	if !apierrors.IsConflict(err) {
		return err
	}
	// Into a fresh object: decoding into current would keep keys the stale copy has and the
	// Secret no longer has (maps are merged, not replaced).
	fresh := &corev1.Secret{}
	if err := r.APIReader.Get(ctx, client.ObjectKeyFromObject(current), fresh); err != nil {
		return fmt.Errorf("read secret %s: %w", current.Name, err)
	}
	*current = *fresh
	return r.restoreMissingKeysOnce(ctx, p, desired, current)
}

func (r *TradingStackReconciler) restoreMissingKeysOnce(ctx context.Context, p *pass, desired, current *corev1.Secret) error {
	var missing []string
	for k := range desired.Data {
		v, ok := current.Data[k]
		// An emptied admin password is the user's "no first admin" (BOOTSTRAP_ADMIN_PASSWORD
		// empty), as in a NAME-admin the user made (userSecretLacks): a value the contract
		// keeps, and the pods start with it. A new random one would bring the bootstrap admin
		// back on their next start.
		if !ok || (len(v) == 0 && desired.Name != adminSecretName(p.stack)) {
			missing = append(missing, k)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	slices.Sort(missing)
	fill := desired.Data
	if desired.Name == postgresCredentialsSecretName(p.stack) {
		user, password := string(current.Data[postgresUserKey]), string(current.Data[postgresPasswordKey])
		if user == "" {
			user = string(desired.Data[postgresUserKey])
		}
		if password == "" {
			password = string(desired.Data[postgresPasswordKey])
			if !slices.Contains(missing, postgresDSNKey) {
				missing = append(missing, postgresDSNKey) // it holds the old password
			}
		}
		fill = toBytes(map[string]string{postgresUserKey: user, postgresPasswordKey: password,
			postgresDSNKey: postgresDSN(p.stack, user, password)})
	}
	patched := current.DeepCopy()
	if patched.Data == nil {
		patched.Data = map[string][]byte{}
	}
	for _, k := range missing {
		patched.Data[k] = fill[k]
	}
	if err := r.Patch(ctx, patched, client.MergeFromWithOptions(current, client.MergeFromWithOptimisticLock{}),
		client.FieldOwner(FieldOwner)); err != nil {
		return fmt.Errorf("put back the keys of secret %s: %w", current.Name, err)
	}
	r.Recorder.Eventf(p.stack, patched, corev1.EventTypeNormal, "Reverted", "Patch",
		"Put back %s of Secret %s with new values: removed by hand, the runtime cannot start without them", strings.Join(missing, ", "), current.Name)
	*current = *patched
	return nil
}

// dsnMismatch says which of keys user and password of NAME-postgres-credentials its dsn does
// not carry (key order: user, password), or nothing when it carries both or the operator
// cannot tell. The database's pod takes keys user and password when it starts, the runtime and
// the migration connect with key dsn: when they disagree (a password rotated by editing only
// key password, or only the dsn), the API pods cannot connect after their next start. The
// generated Secret is never overwritten (a user-edited value is kept), so DatabaseReady says
// it instead (dsnWarning). A key emptied is put back by restoreMissingKeys, and a dsn that
// dsnCredentials does not judge is the user's: nothing is said of either.
func dsnMismatch(sec *corev1.Secret) []string {
	user, password := string(sec.Data[postgresUserKey]), string(sec.Data[postgresPasswordKey])
	if user == "" || password == "" {
		return nil
	}
	dsnUser, dsnPassword, ok := dsnCredentials(string(sec.Data[postgresDSNKey]))
	if !ok {
		return nil
	}
	var differ []string
	if dsnUser != user {
		differ = append(differ, postgresUserKey)
	}
	if dsnPassword != password {
		differ = append(differ, postgresPasswordKey)
	}
	return differ
}

// dsnWarning is DatabaseReady's suffix for the keys dsnMismatch found. It names the Secret
// and its keys, never a value: the dsn and the keys hold the password.
func dsnWarning(sec *corev1.Secret, keys []string) string {
	which, keyWord := strings.Join(keys, " and "), "key"
	if len(keys) > 1 {
		keyWord = "keys"
	}
	return fmt.Sprintf("; warning: the dsn in Secret %s does not carry the %s in its %s %s (the database takes %s, the runtime and the migration dsn: they fail to connect): edit them together",
		sec.Name, which, keyWord, which, which)
}

// dsnCredentials returns the user and password that the runtime's driver, pgx, connects with
// from a postgres URL (empty: the URL names none, and pgx would take its environment's), and
// whether dsn is a URL that pgx parses. pgx parses it as libpq does, which net/url does not
// quite: the userinfo ends at the first '@' that comes before any '/' (net/url takes the
// last, so a raw '@' in a password reads differently), the password after its first ':';
// options user= and password= in the query win over the userinfo; components are
// percent-decoded, a '+' is a '+', and a space inside one or a malformed escape fails the
// parse. A keyword=value dsn, or a URL pgx refuses, is not judged (false).
func dsnCredentials(dsn string) (user, password string, ok bool) {
	rest, isURL := strings.CutPrefix(dsn, "postgresql://")
	if !isURL {
		rest, isURL = strings.CutPrefix(dsn, "postgres://")
	}
	if !isURL || strings.IndexByte(dsn, 0) >= 0 {
		return "", "", false
	}
	var err error
	if i := strings.IndexAny(rest, "@/"); i >= 0 && rest[i] == '@' {
		rawUser, rawPassword, _ := strings.Cut(rest[:i], ":")
		if user, err = libpqDecode(rawUser); err != nil {
			return "", "", false
		}
		if password, err = libpqDecode(rawPassword); err != nil {
			return "", "", false
		}
		rest = rest[i+1:]
	}
	// Hosts, ports and the database name hold no '?': the query starts at the first.
	_, query, _ := strings.Cut(rest, "?")
	for query != "" {
		pair := query
		if i := strings.IndexByte(query, '&'); i >= 0 {
			pair, query = query[:i], query[i+1:]
		} else {
			query = ""
		}
		rawKey, rawValue, found := strings.Cut(pair, "=")
		if !found || strings.Contains(rawValue, "=") {
			return "", "", false
		}
		key, err := libpqDecode(rawKey)
		if err != nil {
			return "", "", false
		}
		value, err := libpqDecode(rawValue)
		if err != nil {
			return "", "", false
		}
		switch key {
		case postgresUserKey:
			user = value
		case postgresPasswordKey:
			password = value
		}
	}
	return user, password, true
}

// libpqDecode percent-decodes a component of a postgres URL as libpq (and pgx) do: leading and
// trailing spaces dropped, one inside refused, '%' followed by two hex digits (not %00).
func libpqDecode(raw string) (string, error) {
	raw = strings.Trim(raw, " ")
	if strings.Contains(raw, " ") {
		return "", errors.New("a space inside a URL component")
	}
	var b strings.Builder
	for i := 0; i < len(raw); i++ {
		if raw[i] != '%' {
			b.WriteByte(raw[i])
			continue
		}
		if i+2 >= len(raw) {
			return "", errors.New("a malformed percent-encoding")
		}
		c, err := strconv.ParseUint(raw[i+1:i+3], 16, 8)
		if err != nil || c == 0 {
			return "", errors.New("a malformed percent-encoding")
		}
		b.WriteByte(byte(c))
		i += 2
	}
	return b.String(), nil
}
