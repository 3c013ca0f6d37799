import React, { FormEvent, useState } from "react";
import { ActionError, rowId, useActionRunner, useDocumentTitle } from "../components";
import { useServer } from "./.mountaineer";

const Home = () => {
  const serverState = useServer();
  const [description, setDescription] = useState("");
  const { error, busy, run } = useActionRunner();
  useDocumentTitle(serverState.title);

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
      <ActionError error={error} />
      {serverState.todos.length === 0 ? (
        <p className="empty">Nothing to do yet. Add your first todo above.</p>
      ) : (
        <ul>
          {serverState.todos.map((todo) => {
            const id = rowId(todo);
            const done = todo.done === true;
            return (
              <li key={id} className={done ? "done" : ""} data-todo-id={id}>
                <input
                  type="checkbox"
                  aria-label={`Done: ${todo.description}`}
                  checked={done}
                  disabled={busy}
                  onChange={() => run(() => serverState.toggle_todo({ requestBody: { id } }))}
                />
                <a href={serverState.linkGenerator.detailController({ todo_id: id })}>{todo.description}</a>
                <button
                  type="button"
                  className="danger"
                  aria-label={`Delete: ${todo.description}`}
                  disabled={busy}
                  onClick={() => run(() => serverState.delete_todo({ requestBody: { id } }))}
                >
                  Delete
                </button>
              </li>
            );
          })}
        </ul>
      )}
      <p className="meta">
        {serverState.remaining} of {serverState.todos.length} open
      </p>
    </div>
  );
};

export default Home;
