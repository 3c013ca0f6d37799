-- What mountaineer 0.8 ran for the guide's models: its `createdb` (handle_createdb) was
-- SQLModel.metadata.create_all with no naming convention, so PostgreSQL named the constraints
-- (detailitem_pkey, owner_email_key, todo_owner_id_fkey); its `migrate` tool kept its
-- revision in migration_info (Migrator.init_db).
CREATE TABLE detailitem (id SERIAL NOT NULL, description VARCHAR NOT NULL, PRIMARY KEY (id));
CREATE TABLE owner (id SERIAL NOT NULL, email VARCHAR NOT NULL, PRIMARY KEY (id), UNIQUE (email));
CREATE TABLE todo (
    id SERIAL NOT NULL, description VARCHAR NOT NULL, owner_id INTEGER,
    PRIMARY KEY (id), FOREIGN KEY(owner_id) REFERENCES owner (id)
);
CREATE INDEX ix_todo_description ON todo (description);
CREATE TABLE IF NOT EXISTS migration_info (active_revision VARCHAR(255));
INSERT INTO migration_info (active_revision) VALUES ('1715044020');
INSERT INTO detailitem (description) VALUES ('from the old app');
