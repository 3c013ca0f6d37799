import React, { useEffect, useState } from "react";

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

/**
 * Keep the tab title in step with the server's render. Mountaineer puts the render's
 * `metadata.title` in the server-rendered <head> only; after an action the page gets a new
 * render but the <head> stays as it was, so the page sets `document.title` itself.
 */
export const useDocumentTitle = (title: string) => {
  useEffect(() => {
    document.title = title;
  }, [title]);
};

/**
 * The primary key of a row read from the database. The generated type has `id?: number | null`
 * (the model declares `id: int | None` so that new rows can be made without one), but a row
 * that came from the database always has it.
 */
export const rowId = (row: { id?: number | null }): number => {
  if (row.id == null) {
    throw new Error("A row from the database has no id.");
  }
  return row.id;
};
