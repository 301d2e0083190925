// Validation of a posted resource with Medplum's validator (`validateResource` from @medplum/core),
// for `POST /_validate` in server.mjs. The StructureDefinitions must already be indexed (server.mjs
// does that before it listens).
//
// What this adds around Medplum, and nothing else (no rules of our own):
// - validateResource throws an OperationOutcomeError when any issue is an error, and returns the
//   issues (warnings) otherwise. Both end up as one OperationOutcome here.
// - Medplum walks into Bundle.entry.resource (and contained resources) and checks their
//   elements, types, cardinalities and element-level invariants, but it evaluates the root-level
//   invariants of the *top* resource only (e.g. a Bundle inside entry.resource does not get its
//   bdl-* rules, an entry resource does not get dom-2..dom-6). So every Bundle.entry.resource is
//   also validated on its own, recursively, and its issues are added with their expressions
//   rewritten to `Bundle.entry[i].resource...`; duplicates are dropped.
//
// Not checked by Medplum (see README.md): required terminology bindings (codes such as Bundle.type,
// request.method, Encounter.status), meta.profile (only the base definitions are used: the
// Subscriptions Backport IG profiles are not available to it), reference target types (warnings
// only).

const { OperationOutcomeError, normalizeOperationOutcome, validateResource } = await import('@medplum/core');

/** Issues of one validateResource call, whether it threw or returned. */
function medplumIssues(resource) {
  try {
    return validateResource(resource);
  } catch (err) {
    if (err instanceof OperationOutcomeError) return err.outcome.issue ?? [];
    return normalizeOperationOutcome(err).issue ?? [];
  }
}

/** `expression` paths of `issues` from a resource validated alone, moved under `prefix`. */
function rebase(issues, resourceType, prefix) {
  return issues.map((issue) => {
    if (!issue.expression) return prefix === resourceType ? issue : { ...issue, expression: [prefix] };
    return {
      ...issue,
      expression: issue.expression.map((e) =>
        e === resourceType || e.startsWith(resourceType + '.') ? prefix + e.slice(resourceType.length) : e
      ),
    };
  });
}

function collect(resource, prefix, out) {
  const resourceType = typeof resource?.resourceType === 'string' ? resource.resourceType : '';
  out.push(...rebase(medplumIssues(resource), resourceType, prefix));
  if (resourceType !== 'Bundle' || !Array.isArray(resource.entry)) return;
  resource.entry.forEach((entry, i) => {
    const nested = entry?.resource;
    if (nested && typeof nested === 'object' && !Array.isArray(nested)) {
      collect(nested, `${prefix}.entry[${i}].resource`, out);
    }
  });
}

/**
 * Validates `resource` (parsed JSON). Returns an OperationOutcome whose `issue` lists every issue
 * found (errors and warnings); an empty list means valid.
 */
export function validate(resource) {
  const issues = [];
  if (!resource || typeof resource !== 'object' || Array.isArray(resource)) {
    issues.push({ severity: 'error', code: 'structure', details: { text: 'Expected a JSON object (a FHIR resource)' } });
  } else {
    collect(resource, typeof resource.resourceType === 'string' ? resource.resourceType : '', issues);
  }
  const seen = new Set();
  const unique = issues.filter((issue) => {
    const key = JSON.stringify([issue.severity, issue.code, issue.details?.text, issue.expression]);
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
  return { resourceType: 'OperationOutcome', issue: unique };
}
