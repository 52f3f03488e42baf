//! A small blocking connection pool shared by the backends: connections open on demand, up to
//! `max_idle` are kept for reuse, and one in a bad state (closed, or left inside a transaction)
//! is dropped instead of returned.

use std::ops::{Deref, DerefMut};
use std::sync::Mutex;

use super::StoreResult;

type Connect<C> = Box<dyn Fn() -> StoreResult<C> + Send + Sync>;

pub struct Pool<C> {
    idle: Mutex<Vec<C>>,
    max_idle: usize,
    connect: Connect<C>,
    reusable: fn(&C) -> bool,
}

impl<C> Pool<C> {
    pub fn new(max_idle: usize, connect: Connect<C>, reusable: fn(&C) -> bool) -> Self {
        Self {
            idle: Mutex::new(Vec::new()),
            max_idle,
            connect,
            reusable,
        }
    }

    /// An idle connection, or a new one.
    pub fn get(&self) -> StoreResult<Pooled<'_, C>> {
        let idle = self.idle.lock().ok().and_then(|mut v| v.pop());
        let conn = match idle {
            Some(c) => c,
            None => (self.connect)()?,
        };
        Ok(Pooled {
            pool: self,
            conn: Some(conn),
        })
    }

    /// A new connection that is not pooled (a batch writer's own, say).
    pub fn open(&self) -> StoreResult<C> {
        (self.connect)()
    }

    /// Takes every idle connection out of the pool (to close them somewhere safe).
    pub fn drain(&self) -> Vec<C> {
        self.idle
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }

    fn put_back(&self, conn: C) {
        if (self.reusable)(&conn)
            && let Ok(mut idle) = self.idle.lock()
            && idle.len() < self.max_idle
        {
            idle.push(conn);
        }
    }
}

/// A connection borrowed from the pool; returned on drop.
pub struct Pooled<'a, C> {
    pool: &'a Pool<C>,
    conn: Option<C>,
}

impl<C> Deref for Pooled<'_, C> {
    type Target = C;
    fn deref(&self) -> &C {
        self.conn.as_ref().expect("present until drop")
    }
}

impl<C> DerefMut for Pooled<'_, C> {
    fn deref_mut(&mut self) -> &mut C {
        self.conn.as_mut().expect("present until drop")
    }
}

impl<C> Drop for Pooled<'_, C> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.put_back(conn);
        }
    }
}
