import React, { FormEvent, useState } from "react";
import { useServer } from "./.mountaineer";

const errorMessage = (error: unknown): string => {
  const body = (error as { body?: unknown } | null)?.body;
  if (body && typeof body === "object" && "detail" in body && typeof body.detail === "string") {
    return body.detail;
  }
  return "Something went wrong; please try again.";
};

const Detail = () => {
  const serverState = useServer();
  const { todo } = serverState;
  const [description, setDescription] = useState(todo.description);
  const [error, setError] = useState<string | null>(null);
  const [saved, setSaved] = useState(false);
  const [busy, setBusy] = useState(false);

  const run = async (action: () => Promise<unknown>): Promise<boolean> => {
    setBusy(true);
    setError(null);
    setSaved(false);
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

  const onRename = async (event: FormEvent) => {
    event.preventDefault();
    setSaved(await run(() => serverState.rename_todo({ requestBody: { id: todo.id, description } })));
  };

  return (
    <div className="card">
      <h2 className={todo.done ? "done" : ""}>{todo.description}</h2>
      <p className="meta">
        #{todo.id} · {todo.done ? "done" : "open"} · created {new Date(serverState.created_at).toUTCString()}
      </p>
      <form onSubmit={onRename}>
        <input
          type="text"
          name="description"
          aria-label="Description"
          value={description}
          onChange={(event) => setDescription(event.target.value)}
        />
        <button type="submit" disabled={busy}>
          Rename
        </button>
        <button
          type="button"
          className="secondary"
          disabled={busy}
          onClick={() => run(() => serverState.toggle_todo({ requestBody: { id: todo.id } }))}
        >
          {todo.done ? "Mark open" : "Mark done"}
        </button>
      </form>
      {error && (
        <p className="error" role="alert">
          {error}
        </p>
      )}
      {saved && <p className="meta">Saved.</p>}
      <p>
        <a href={serverState.linkGenerator.homeController()}>← All todos</a>
      </p>
    </div>
  );
};

export default Detail;
