-- Why: webhooks carry their organisation (issue 11), so listing them and planning deliveries
-- read it from the row instead of looking up the registering token's organisation per webhook
-- above the store. Existing webhooks take the organisation of the token that registered them.

ALTER TABLE webhooks ADD COLUMN org_id INTEGER REFERENCES orgs (id);
UPDATE webhooks SET org_id = (SELECT u.org_id FROM tokens t JOIN users u ON u.id = t.user_id
                              WHERE t.id = webhooks.created_by);
CREATE INDEX webhooks_org ON webhooks (org_id, id);
