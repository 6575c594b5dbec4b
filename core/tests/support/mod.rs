pub mod chopsticks;
