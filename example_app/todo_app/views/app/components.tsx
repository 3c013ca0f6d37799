import React, { useState } from "react";

/**
 * The message of an error thrown by an action: the `detail` of the JSON error body. Declared
 * errors (APIException) arrive parsed; others, such as mountaineer_db's 409 for a duplicate,
 * arrive as text.
 */
export const errorMessage = (error: unknown): string => {
  let body = (error as { body?: unknown } | null)?.body;
  if (typeof body === "string") {
    try {
      body = JSON.parse(body);
    } catch {
      body = null;
    }
  }
  if (body && typeof body === "object" && "detail" in body && typeof body.detail === "string") {
    return body.detail;
  }
  return "Something went wrong; please try again.";
};

/**
 * State for running a page's actions: `run(action)` marks the page busy, clears the last
 * error, awaits the action and keeps its error message; it resolves to whether it succeeded.
 * The page's data refreshes from the sideeffect's new render.
 */
export const useActionRunner = (onStart?: () => void) => {
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  const run = async (action: () => Promise<unknown>): Promise<boolean> => {
    setBusy(true);
    setError(null);
    onStart?.();
    try {
      await action();
      return true;
    } catch (caught) {
      setError(errorMessage(caught));
      return false;
    } finally {
      setBusy(false);
    }
  };

  return { error, busy, run };
};

/** The last action's error, as an alert; nothing when there is none. */
export const ActionError = ({ error }: { error: string | null }) =>
  error ? (
    <p className="error" role="alert">
      {error}
    </p>
  ) : null;
