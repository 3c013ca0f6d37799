import React, { FormEvent, useState } from "react";
import { useServer } from "./.mountaineer";

/** The message of an error thrown by an action (an APIException's `detail`). */
export const errorMessage = (error: unknown): string => {
  const body = (error as { body?: unknown } | null)?.body;
  if (body && typeof body === "object" && "detail" in body && typeof body.detail === "string") {
    return body.detail;
  }
  return "Something went wrong; please try again.";
};

const Home = () => {
  const serverState = useServer();
  const [description, setDescription] = useState("");
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  // Run an action; the page's data refreshes from the sideeffect's new render.
  const run = async (action: () => Promise<unknown>): Promise<boolean> => {
    setBusy(true);
    setError(null);
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

  const onAdd = async (event: FormEvent) => {
    event.preventDefault();
    const added = await run(() => serverState.add_todo({ requestBody: { description } }));
    if (added) {
      setDescription("");
    }
  };

  return (
    <div className="card">
      <form onSubmit={onAdd}>
        <input
          type="text"
          name="description"
          aria-label="New todo"
          placeholder="What needs doing?"
          value={description}
          onChange={(event) => setDescription(event.target.value)}
        />
        <button type="submit" disabled={busy}>
          Add
        </button>
      </form>
      {error && (
        <p className="error" role="alert">
          {error}
        </p>
      )}
      {serverState.todos.length === 0 ? (
        <p className="empty">Nothing to do yet. Add your first todo above.</p>
      ) : (
        <ul>
          {serverState.todos.map((todo) => (
            <li key={todo.id} className={todo.done ? "done" : ""} data-todo-id={todo.id}>
              <input
                type="checkbox"
                aria-label={`Done: ${todo.description}`}
                checked={todo.done}
                disabled={busy}
                onChange={() => run(() => serverState.toggle_todo({ requestBody: { id: todo.id } }))}
              />
              <a href={serverState.linkGenerator.detailController({ todo_id: todo.id })}>{todo.description}</a>
              <button
                type="button"
                className="danger"
                aria-label={`Delete: ${todo.description}`}
                disabled={busy}
                onClick={() => run(() => serverState.delete_todo({ requestBody: { id: todo.id } }))}
              >
                Delete
              </button>
            </li>
          ))}
        </ul>
      )}
      <p className="meta">
        {serverState.remaining} of {serverState.todos.length} open
      </p>
    </div>
  );
};

export default Home;
